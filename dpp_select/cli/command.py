"""The ``dpp-select`` command's options and the steps its one-process and sharded runs share.

``cli.py`` runs the command in one process, ``cli_sharded.py`` on the processes of a launcher;
both check the arguments, read the chosen fields, embed (through the cache) and report the same
way, with the functions here.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from spard_io import distribution_version

from ..embed import EmptyTextError, embed_texts
from ..selection import METHODS, SelectionResult, select
from ._cache import cache_path, load_cached, model_digest, save_cached
from ._files import check_distinct, check_output

__all__ = [
    "DESCRIPTION",
    "build_parser",
    "check_args",
    "chosen_by",
    "embed",
    "fields",
    "report",
    "select_recording_warnings",
    "texts",
]

#: The command's one-line description (``--help``).
DESCRIPTION = "``dpp-select``: pick a safe subset of a JSONL pool for a JSONL fine-tuning set."
_UNSAFE = "unsafe"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command's options, each with its help text."""
    p = argparse.ArgumentParser(prog="dpp-select", description=DESCRIPTION)
    _add_file_options(p)
    _add_selection_options(p)
    _add_run_options(p)
    return p


def _add_file_options(p: argparse.ArgumentParser) -> None:
    """What is read and written, and which fields."""
    p.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {distribution_version()}",
        help="print the installed spard version and exit",
    )
    p.add_argument("--pool", required=True, help="candidate pool JSONL (e.g. SPARD safety data)")
    p.add_argument("--target", required=True, help="fine-tuning set JSONL (e.g. GSM8K)")
    p.add_argument("--model", required=True, help="local path of a Hugging Face model")
    p.add_argument("--out", required=True, help="output JSONL of the selected pool rows")
    p.add_argument(
        "--indices-out",
        help="output .npy of the selected indices, written at "
        "exactly this path (default: OUT with .indices.npy)",
    )
    p.add_argument(
        "--pool-fields",
        default="prompt",
        help="comma-separated pool fields to embed, joined by a blank line "
        "(default: prompt; e.g. prompt,safe)",
    )
    p.add_argument(
        "--target-fields",
        default="prompt",
        help="comma-separated fine-tuning fields to embed (default: prompt)",
    )
    p.add_argument(
        "--keep-fields",
        help="comma-separated pool fields the output rows keep (default: all; e.g. prompt,safe)",
    )
    p.add_argument(
        "--allow-unsafe-field",
        action="store_true",
        help="permit embedding a field named 'unsafe' (off by default)",
    )


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """How many items and by which rule."""
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--k", type=int, help="number of items to select")
    size.add_argument(
        "--ratio", type=float, help="select ceil(RATIO x fine-tuning set size) items (SPARD: 0.03)"
    )
    p.add_argument(
        "--method",
        default="dpp",
        choices=METHODS,
        metavar="METHOD",
        help="selection rule: dpp (SPARD's relevance-weighted DPP, the default), "
        "dpp_diversity_only (beta 0), top_relevance (the k most relevant), random, "
        "high_relevance / low_relevance (k drawn from the more / less relevant half "
        "of the pool)",
    )
    p.add_argument("--beta", type=float, default=4.0, help="relevance exponent (default 4)")
    p.add_argument(
        "--jitter",
        default="1e-6",
        help="kernel jitter: a number >= 0 (default 1e-6, the authors' constant) or "
        "'relative' (1e-6 x the median w^2)",
    )
    p.add_argument(
        "--lazy",
        action="store_true",
        help="exact lazy greedy: the same picks, usually far less work on large pools",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """How the texts are embedded, cached and shared over processes."""
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="texts per forward pass when embedding (default 32)",
    )
    p.add_argument("--max-length", type=int, default=512, help="tokens per text")
    p.add_argument("--device", default=None, help="torch device for the model (default cpu)")
    p.add_argument(
        "--cache-dir",
        default=os.path.join(".cache", "dpp_select"),
        help="embedding cache folder (default .cache/dpp_select)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="shard reading, embedding and selection over the processes of a "
        "launcher (implied under torchrun with more than one process)",
    )


def fields(spec: str, allow_unsafe: bool, option: str) -> list[str]:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    if not fields:
        raise ValueError(f"{option}: no field names in {spec!r}")
    if _UNSAFE in fields and not allow_unsafe:
        raise ValueError(
            "refusing to embed the 'unsafe' field; pass --allow-unsafe-field if you really mean to"
        )
    return fields


def _jitter(spec: str) -> float | str:
    if spec == "relative":
        return spec
    try:
        value = float(spec)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"--jitter {spec!r}: give a finite number >= 0 or 'relative'")
    return value


def _check_device(spec: str | None) -> None:
    if spec is None:
        return
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {spec!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {spec}: MPS is not available here; use --device cpu")


def check_args(args: argparse.Namespace) -> str:
    """Every check that needs no data, before any reading or embedding; returns indices_out."""
    if args.k is not None and args.k < 1:
        raise ValueError(f"--k must be a positive integer, got {args.k}")
    if args.ratio is not None and not (math.isfinite(args.ratio) and args.ratio > 0):
        raise ValueError(f"--ratio must be a positive number, got {args.ratio}")
    if not (math.isfinite(args.beta) and args.beta >= 0):
        raise ValueError(f"--beta must be a finite number >= 0, got {args.beta}")
    args.jitter = _jitter(args.jitter)
    if args.batch_size < 1 or args.max_length < 1:
        raise ValueError("--batch-size and --max-length must be positive integers")
    _check_device(args.device)
    if not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model!r} is not a local model folder")
    if not args.no_cache and os.path.exists(args.cache_dir) and not os.path.isdir(args.cache_dir):
        raise ValueError(f"--cache-dir {args.cache_dir}: exists and is not a folder")
    indices_out = args.indices_out or os.path.splitext(args.out)[0] + ".indices.npy"
    check_output(args.out, "--out")
    check_output(indices_out, "--indices-out")
    check_distinct(
        [("--out", args.out), ("--indices-out", indices_out)],
        [("--pool", args.pool), ("--target", args.target)],
    )
    return indices_out


def chosen_by(
    fields: list[str], keep: list[str] | None, option: str = "--pool-fields"
) -> dict[str, str]:
    """The option that asked for each required field, named when a row lacks it."""
    chosen = {field: "--keep-fields" for field in keep or []}
    chosen.update({field: option for field in fields})
    return chosen


def texts(rows: list[dict], fields: list[str]) -> list[str]:
    return ["\n\n".join(row[f] for f in fields) for row in rows]


def _load_model(args: argparse.Namespace, loaded: dict) -> None:
    """The base model (no LM head: embeddings are hidden states) and tokenizer of ``--model``.

    transformers' own load report is silenced: loading a causal LM's checkpoint without its head
    always lists the head's weights as unexpected, which reads like an error in a successful run.
    What the report would say that matters, weights the folder lacks, is logged here instead."""
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ValueError("embedding needs transformers: pip install 'spard[hf]'") from None

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if args.no_progress:
        hf_logging.disable_progress_bar()  # its "Loading weights" bar
    try:
        loaded["tokenizer"] = AutoTokenizer.from_pretrained(args.model)
        model, info = AutoModel.from_pretrained(args.model, output_loading_info=True)
        loaded["model"] = model.to(args.device or "cpu")
    except Exception as err:  # transformers raises many types for a folder that is not a model
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"--model {args.model}: cannot load a model and tokenizer from this "
            f"folder ({type(err).__name__}: {first})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    untrained = [*info["missing_keys"], *(key for key, *_ in info["mismatched_keys"])]
    if untrained:
        logger.warning(
            "--model %s: %d weights are missing from the folder or have another shape (%s): "
            "they are random, so the embeddings do not reflect the model",
            args.model,
            len(untrained),
            ", ".join(sorted(untrained)[:3]) + (", ..." if len(untrained) > 3 else ""),
        )


def embed(
    texts: list[str], source: str, args: argparse.Namespace, loaded: dict, first_row: int = 0
) -> np.ndarray:
    """Embeddings of the texts read from ``source`` (named in errors), cached when allowed.

    ``texts`` are the file's rows from ``first_row`` on (a rank's share): errors name rows by
    their 0-based number in the file."""
    path = None
    if not args.no_cache:
        if "model_sha256" not in loaded:  # once per run: it reads every weight
            loaded["model_sha256"] = model_digest(args.model)
        path = cache_path(args.cache_dir, loaded["model_sha256"], texts, args.max_length)
        cached = load_cached(path, len(texts))
        if cached is not None:
            return cached
    if "model" not in loaded:
        _load_model(args, loaded)
    try:
        emb = embed_texts(
            texts,
            loaded["model"],
            loaded["tokenizer"],
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=args.device,
            progress=not args.no_progress,
        )
    except EmptyTextError as err:  # say which file, and which rows of it
        rows = EmptyTextError([first_row + row for row in err.rows])
        raise ValueError(f"{source}: {rows} (0-based row numbers)") from None
    if path is not None:
        save_cached(path, emb)
    return emb


def select_recording_warnings(
    pool_emb: Any, target_emb: Any, args: argparse.Namespace, process_group: Any = None
) -> tuple[SelectionResult, list[warnings.WarningMessage]]:
    """``select`` with the command's options, and the warnings it raised (for ``report``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = select(
            pool_emb,
            target_emb,
            k=args.k,
            ratio=args.ratio,
            method=args.method,
            beta=args.beta,
            seed=args.seed,
            jitter=args.jitter,
            lazy=args.lazy,
            process_group=process_group,
        )
    return result, caught


def report(
    result: Any,
    n_pool: int,
    args: argparse.Namespace,
    indices_out: str,
    caught: Sequence[warnings.WarningMessage],
    where: str = "",
) -> None:
    """What was selected and written, the selection diagnostics, and any warnings."""
    print(
        f"selected {result.indices.size} of {n_pool} pool items with {args.method}{where} "
        f"-> {args.out}, {indices_out}"
    )
    print(result.summary.format())
    for caught_warning in caught:
        print(f"dpp-select: warning: {caught_warning.message}", file=sys.stderr)
