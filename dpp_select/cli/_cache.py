"""The ``dpp-select`` embedding cache: one .npy per (model files, settings, texts).

A cache must never turn into a permanent failure: an entry that cannot be read or does not hold
what it should (truncated, empty, garbage, wrong shape, NaN/inf) is a miss, logged with its
path, and is replaced by the fresh embeddings. A cache that cannot be written is only a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from spard_io import write_atomic

__all__ = ["cache_path", "load_cached", "save_cached"]

logger = logging.getLogger(__name__)


def _model_fingerprint(model_path: str) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of the model's files, so a changed checkpoint misses the cache."""
    entries = []
    for name in sorted(os.listdir(model_path)):
        stat = os.stat(os.path.join(model_path, name))
        entries.append((name, stat.st_size, stat.st_mtime_ns))
    return entries


def cache_path(cache_dir: str, model_path: str, texts: list[str], max_length: int) -> str:
    """Where the embeddings of ``texts`` under this model and ``max_length`` are cached."""
    h = hashlib.sha256()
    meta = {
        "model": os.path.abspath(model_path),
        "files": _model_fingerprint(model_path),
        "max_length": max_length,
        "pooling": "mean-last-hidden",
        "version": 1,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    for text in texts:
        h.update(len(text.encode()).to_bytes(8, "little"))
        h.update(text.encode())
    return os.path.join(cache_dir, f"emb-{h.hexdigest()[:32]}.npy")


def _problem(path: str, rows: int) -> tuple[np.ndarray | None, str | None]:
    try:
        cached = np.load(path, allow_pickle=False)
    except Exception as err:  # truncated, empty, garbage: whatever numpy raises, it is a miss
        return None, f"unreadable ({type(err).__name__})"
    if not isinstance(cached, np.ndarray) or cached.dtype.kind != "f":
        return None, f"not a float array (dtype {getattr(cached, 'dtype', None)})"
    if cached.ndim != 2 or cached.shape[0] != rows or cached.shape[1] == 0:
        return None, f"shape {cached.shape}, expected ({rows}, dim)"
    if not np.isfinite(cached).all():
        return None, "holds NaN or inf"
    return cached, None


def load_cached(path: str, rows: int) -> np.ndarray | None:
    """The cached (rows, dim) embeddings at ``path``, or ``None`` (absent or unusable)."""
    if not os.path.exists(path):
        return None
    cached, problem = _problem(path, rows)
    if problem is not None:
        logger.warning(
            "embedding cache entry %s is %s; treating it as a miss and embedding again",
            path,
            problem,
        )
        return None
    logger.info("embeddings from cache %s", path)
    return cached


def save_cached(path: str, emb: np.ndarray) -> None:
    """Store ``emb`` at ``path``; a failure is logged, never raised (the cache is optional)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, lambda handle: np.save(handle, emb, allow_pickle=False))
    except OSError as err:
        logger.warning(
            "could not write the embedding cache entry %s (%s); continuing without it", path, err
        )
