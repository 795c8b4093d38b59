"""``dpp-select``: pick a safe subset of a JSONL pool for a JSONL fine-tuning set.

Reads both files strictly (errors name the file and line), embeds the chosen text fields with a
local model (mean of final hidden states), caches the embeddings as .npy keyed by a hash of the
model, the texts and the settings, runs :func:`dpp_select.select`, and writes the selected rows
(JSONL, in selection order) and their pool indices (.npy).

The SPARD pool format is {"prompt", "safe", "unsafe"}: by default only the prompt is embedded, and
the unsafe response is never embedded unless ``--allow-unsafe-field`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from typing import Sequence

import numpy as np

from .embed import embed_texts
from .jsonl import JSONLError, read_jsonl, write_jsonl
from .selection import METHODS, select

__all__ = ["main"]

logger = logging.getLogger(__name__)

_UNSAFE = "unsafe"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpp-select", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="candidate pool JSONL (e.g. SPARD safety data)")
    p.add_argument("--target", required=True, help="fine-tuning set JSONL (e.g. GSM8K)")
    p.add_argument("--model", required=True, help="local path of a Hugging Face model")
    p.add_argument("--out", required=True, help="output JSONL of the selected pool rows")
    p.add_argument("--indices-out", help="output .npy of the selected indices "
                   "(default: OUT with .indices.npy)")
    p.add_argument("--pool-fields", default="prompt",
                   help="comma-separated pool fields to embed, joined by a blank line "
                   "(default: prompt; e.g. prompt,safe)")
    p.add_argument("--target-fields", default="prompt",
                   help="comma-separated fine-tuning fields to embed (default: prompt)")
    p.add_argument("--allow-unsafe-field", action="store_true",
                   help="permit embedding a field named 'unsafe' (off by default)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--k", type=int, help="number of items to select")
    size.add_argument("--ratio", type=float,
                      help="select ceil(RATIO x fine-tuning set size) items (SPARD: 0.03)")
    p.add_argument("--method", default="dpp", choices=METHODS)
    p.add_argument("--beta", type=float, default=4.0, help="relevance exponent (default 4)")
    p.add_argument("--jitter", type=float, default=1e-6, help="kernel jitter (default 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512, help="tokens per text")
    p.add_argument("--device", default=None, help="torch device for the model (default cpu)")
    p.add_argument("--cache-dir", default=os.path.join(".cache", "dpp_select"),
                   help="embedding cache folder (default .cache/dpp_select)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="shard reading, embedding and selection over the processes of a "
                   "launcher (implied under torchrun with more than one process)")
    return p


def _fields(spec: str, allow_unsafe: bool) -> list[str]:
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    if not fields:
        raise ValueError(f"no field names in {spec!r}")
    if _UNSAFE in fields and not allow_unsafe:
        raise ValueError("refusing to embed the 'unsafe' field; pass --allow-unsafe-field if "
                         "you really mean to")
    return fields


def _texts(rows: list[dict], fields: list[str]) -> list[str]:
    return ["\n\n".join(row[f] for f in fields) for row in rows]


def _model_fingerprint(model_path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of the model's files, so a changed checkpoint misses the cache."""
    entries = []
    for name in sorted(os.listdir(model_path)):
        stat = os.stat(os.path.join(model_path, name))
        entries.append((name, stat.st_size, stat.st_mtime_ns))
    return entries


def _cache_key(model_path: str, texts: list[str], args: argparse.Namespace) -> str:
    h = hashlib.sha256()
    meta = {"model": os.path.abspath(model_path), "files": _model_fingerprint(model_path),
            "max_length": args.max_length, "pooling": "mean-last-hidden", "version": 1}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for text in texts:
        h.update(len(text.encode()).to_bytes(8, "little"))
        h.update(text.encode())
    return h.hexdigest()[:32]


def _embed(texts: list[str], args: argparse.Namespace, loaded: dict) -> np.ndarray:
    path = None
    if not args.no_cache:
        path = os.path.join(args.cache_dir, f"emb-{_cache_key(args.model, texts, args)}.npy")
        if os.path.isfile(path):
            cached = np.load(path, allow_pickle=False)
            if cached.ndim == 2 and cached.shape[0] == len(texts):
                logger.info("embeddings from cache %s", path)
                return cached
    if not loaded:
        from transformers import AutoModel, AutoTokenizer

        loaded["tokenizer"] = AutoTokenizer.from_pretrained(args.model)
        loaded["model"] = AutoModel.from_pretrained(args.model).to(args.device or "cpu")
    emb = embed_texts(texts, loaded["model"], loaded["tokenizer"], batch_size=args.batch_size,
                      max_length=args.max_length, device=args.device,
                      progress=not args.no_progress)
    if path is not None:
        os.makedirs(args.cache_dir, exist_ok=True)
        tmp = path + ".tmp.npy"
        np.save(tmp, emb, allow_pickle=False)
        os.replace(tmp, path)
    return emb


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0, or exits with status 2 and a message on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .cli_sharded import run_sharded, wants_distributed

    if wants_distributed(args):
        return run_sharded(args, parser)
    try:
        if not os.path.isdir(args.model):
            raise ValueError(f"--model {args.model!r} is not a local model folder")
        pool_fields = _fields(args.pool_fields, args.allow_unsafe_field)
        target_fields = _fields(args.target_fields, args.allow_unsafe_field)
        pool_rows = read_jsonl(args.pool, required=pool_fields)
        target_rows = read_jsonl(args.target, required=target_fields)
        if not pool_rows:
            raise ValueError(f"{args.pool}: the pool holds no rows")
        if not target_rows:
            raise ValueError(f"{args.target}: the fine-tuning set holds no rows")
        loaded: dict = {}
        pool_emb = _embed(_texts(pool_rows, pool_fields), args, loaded)
        target_emb = _embed(_texts(target_rows, target_fields), args, loaded)
        result = select(pool_emb, target_emb, k=args.k, ratio=args.ratio, method=args.method,
                        beta=args.beta, seed=args.seed, jitter=args.jitter)
    except (JSONLError, ValueError, OSError) as err:
        parser.exit(2, f"dpp-select: error: {err}\n")
    indices_out = args.indices_out or os.path.splitext(args.out)[0] + ".indices.npy"
    write_jsonl(args.out, (pool_rows[i] for i in result.indices))
    np.save(indices_out, result.indices, allow_pickle=False)
    print(f"selected {result.indices.size} of {len(pool_rows)} pool items with {args.method} "
          f"-> {args.out}, {indices_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
