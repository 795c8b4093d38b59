"""The ``dpp-select`` embedding cache: one .npy per (model files' contents, settings, texts).

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

__all__ = ["cache_path", "load_cached", "model_digest", "save_cached"]

logger = logging.getLogger(__name__)


def model_digest(model_path: str) -> str:
    """SHA-256 of the model folder's files, names and contents: other weights miss the cache even
    with the same size and modification time. One read of the weights; the command takes it once
    per run."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_path)):
        path = os.path.join(model_path, name)
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        if os.path.isfile(path):
            digest.update(os.path.getsize(path).to_bytes(8, "little"))
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def cache_path(cache_dir: str, model_sha256: str, texts: list[str], max_length: int) -> str:
    """Where the embeddings of ``texts`` under the model of digest ``model_sha256``
    (:func:`model_digest`) and ``max_length`` are cached."""
    h = hashlib.sha256()
    meta = {
        "model_sha256": model_sha256,
        "max_length": max_length,
        "pooling": "mean-last-hidden",
        "version": 2,
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
