"""``dpp-select``: pick a safe subset of a JSONL pool for a JSONL fine-tuning set.

Reads both files strictly (errors name the file and line), embeds the chosen text fields with a
local model (mean of final hidden states), caches the embeddings as .npy keyed by a hash of the
model's files (their contents), the texts and the settings, runs :func:`dpp_select.select`, and writes the selected rows
(JSONL, in selection order) and their pool indices (.npy), then prints the selection's
diagnostics (relevance and weight quantiles, the jitter's weight) and any advice.

Nothing is lost: every argument and output location is checked before any embedding, an output
that names an input (or the other output) is refused, and both outputs are written to temporary
files before either is renamed into place (a failure, such as a full disk, leaves the previous
pair). Every user error exits with status 2 and one line naming the file.

The SPARD pool format is {"prompt", "safe", "unsafe"}: by default only the prompt is embedded, and
the unsafe response is never embedded unless ``--allow-unsafe-field`` is given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from spard_io import read_jsonl

from ..selection import resolve_k
from ._files import write_outputs
from .command import (
    build_parser,
    check_args,
    chosen_by,
    embed,
    fields,
    report,
    select_recording_warnings,
    texts,
)
from .sharded import run_sharded, wants_distributed

__all__ = ["build_parser", "main"]


def _run(args: argparse.Namespace) -> None:
    indices_out = check_args(args)
    pool_fields = fields(args.pool_fields, args.allow_unsafe_field, "--pool-fields")
    target_fields = fields(args.target_fields, args.allow_unsafe_field, "--target-fields")
    keep = None if args.keep_fields is None else fields(args.keep_fields, True, "--keep-fields")
    pool_rows = read_jsonl(
        args.pool, required=pool_fields + (keep or []), chosen_by=chosen_by(pool_fields, keep)
    )
    target_rows = read_jsonl(
        args.target,
        required=target_fields,
        chosen_by=chosen_by(target_fields, None, "--target-fields"),
    )
    if not pool_rows:
        raise ValueError(f"{args.pool}: the pool holds no rows")
    if not target_rows:
        raise ValueError(f"{args.target}: the fine-tuning set holds no rows")
    resolve_k(args.k, args.ratio, len(pool_rows), len(target_rows))
    loaded: dict = {}
    pool_emb = embed(texts(pool_rows, pool_fields), args.pool, args, loaded)
    target_emb = embed(texts(target_rows, target_fields), args.target, args, loaded)
    result, caught = select_recording_warnings(pool_emb, target_emb, args)
    rows = (pool_rows[i] for i in result.indices)
    if keep is not None:
        rows = ({f: row[f] for f in keep} for row in rows)
    write_outputs(args.out, indices_out, rows, result.indices)
    report(result, len(pool_rows), args, indices_out, caught)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0, or exits with status 2 and one line on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if wants_distributed(args):
        return run_sharded(args, parser)
    try:
        _run(args)
    except (ValueError, OSError) as err:  # JSONLError and EmbeddingError are ValueErrors
        message = " ".join(str(err).split())
        parser.exit(2, f"dpp-select: error: {message}\n")
    return 0
