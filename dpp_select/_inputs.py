"""Validation of embedding matrices shared by relevance scoring and greedy selection.

Every entry point funnels its arrays through here so that bad input fails the same way
everywhere, before any work is done, with a message that names the offending rows and says
what to fix. Row norms are computed here (chunked, in float64) because both the checks and the
algorithms need them, and one pass over a million-row matrix is worth sharing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["EmbeddingError", "is_torch", "check_embeddings", "row_norms"]

_NORM_CHUNK_ELEMENTS = 1 << 17  # float64 entries converted at once (1 MiB: stays in cache)
# On an accelerator each chunk costs a launch and a copy to the host: 128 MiB at once there.
_DEVICE_NORM_CHUNK_ELEMENTS = 1 << 24
_FLOAT_NUMPY = (np.float16, np.float32, np.float64)
# Norms outside this range may have over- or underflowed in the sum of squares.
_NORM_LOW, _NORM_HIGH = 2.0**-450, 2.0**450
_FLOAT_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class EmbeddingError(ValueError):
    """Embeddings that cannot be used as given; the message names the problem and the rows."""


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (as opposed to something NumPy can read)."""
    return isinstance(x, torch.Tensor)


def _name_rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    more = f" and {rows.size - 10} more" if rows.size > 10 else ""
    return f"{shown}{more}"


def _rescaled_norms(chunk: np.ndarray) -> np.ndarray:
    """Norms of float64 rows whose squares overflow or underflow: scale by the largest entry."""
    peak = np.max(np.abs(chunk), axis=1)
    safe = np.where(peak > 0, peak, 1.0)
    scaled = chunk / safe[:, None]
    return peak * np.sqrt(np.einsum("ij,ij->i", scaled, scaled))


def row_norms(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Euclidean norm of each row in float64 (NumPy, on the CPU), computed chunk by chunk.

    A row holding NaN or inf gets a non-finite norm, so this one pass also finds those rows
    without an (N, d) boolean temporary. Rows whose sum of squares leaves float64's comfortable
    range (entries beyond about 1e150 or below 1e-150) are recomputed scaled by their largest
    entry, so every finite row has a finite, accurate norm.
    """
    n = x.shape[0]
    on_device = is_torch(x) and x.device.type != "cpu"
    chunk = _DEVICE_NORM_CHUNK_ELEMENTS if on_device else _NORM_CHUNK_ELEMENTS
    rows = max(1, chunk // max(1, x.shape[1]))
    out = np.empty(n, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for lo in range(0, n, rows):
            _chunk_norms(x, lo, min(n, lo + rows), out)
    return out


def _chunk_norms(x: np.ndarray | torch.Tensor, lo: int, hi: int, out: np.ndarray) -> None:
    """Write the float64 norms of rows lo:hi into ``out[lo:hi]``."""
    if is_torch(x):
        chunk = x[lo:hi].to(torch.float64)
        out[lo:hi] = torch.linalg.vector_norm(chunk, dim=1).cpu().numpy()
    else:
        chunk = np.asarray(x[lo:hi], dtype=np.float64)
        out[lo:hi] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    part = out[lo:hi]
    odd = np.flatnonzero(~((part > _NORM_LOW) & (part < _NORM_HIGH)))
    if odd.size:
        if is_torch(x):
            index = torch.from_numpy(odd + lo).to(x.device)
            rows = x.index_select(0, index).to(torch.float64).cpu().numpy()
        else:
            rows = np.asarray(x[lo + odd], dtype=np.float64)
        part[odd] = _rescaled_norms(rows)


def check_embeddings(x: Any, name: str, dim: int | None = None) -> tuple[Any, np.ndarray]:
    """Validate an (N, d) floating embedding matrix and return it with its float64 row norms.

    NumPy input stays NumPy (float16 is widened to float32, which is exact); torch tensors stay on
    their device and keep their dtype. Raises :class:`EmbeddingError` for a wrong shape or dtype,
    an empty matrix, a dimension different from ``dim``, and rows that hold NaN/inf or are all
    zero (cosine similarity is undefined there), naming those rows.
    """
    if is_torch(x):
        if x.dtype not in _FLOAT_TORCH:
            raise EmbeddingError(
                f"{name}: dtype {x.dtype} is not a floating type; cast with .float() first"
            )
        x = x.detach()
    else:
        if isinstance(x, np.ndarray) and x.dtype == object:
            raise EmbeddingError(f"{name}: object arrays are not embeddings; pass a float array")
        x = np.asarray(x)
        if x.dtype not in _FLOAT_NUMPY:
            raise EmbeddingError(
                f"{name}: dtype {x.dtype} is not float16/float32/float64; "
                "cast with .astype(np.float32) first"
            )
        if x.dtype == np.float16:
            x = x.astype(np.float32)
    if x.ndim != 2:
        raise EmbeddingError(
            f"{name}: expected a 2-D (num_items, dim) matrix, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise EmbeddingError(f"{name}: no rows; the {name} must hold at least one item")
    if x.shape[1] == 0:
        raise EmbeddingError(f"{name}: embedding dimension is 0")
    if dim is not None and x.shape[1] != dim:
        raise EmbeddingError(
            f"{name}: embedding dimension {x.shape[1]} differs from {dim}; embed both sets "
            "with the same model"
        )
    norms = row_norms(x)
    bad = np.flatnonzero(~np.isfinite(norms))
    if bad.size:
        raise EmbeddingError(
            f"{name}: rows {_name_rows(bad)} hold NaN or inf; drop or re-embed those items"
        )
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise EmbeddingError(
            f"{name}: rows {_name_rows(zero)} are all zero, so their cosine similarity is "
            "undefined; drop those items (often empty texts)"
        )
    return x, norms
