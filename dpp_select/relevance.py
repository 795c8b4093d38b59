"""Relevance of each pool item to the fine-tuning task (SPARD Eq. 5).

q_i = max over fine-tuning items z of cos(x_i, x_z). The (N x M) similarity matrix is never held
whole: rows of the pool and columns of the targets are processed in blocks whose product stays
under a fixed size, so a million-item pool against tens of thousands of targets fits in memory.
Over a sharded pool, every rank scores its own rows against every rank's targets, gathered in
bounded rounds with the collectives of ``distributed.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ._inputs import check_embeddings, is_torch
from .distributed import DistributedArgumentError, agree, all_gather_tensor, collective_device

__all__ = ["relevance_scores"]

_BLOCK_ELEMENTS = 1 << 22  # entries of one similarity block (16 MiB in float32)
_TARGET_BLOCK = 8192  # target rows per block, so a block always spans many pool rows
_GATHER_BYTES = 1 << 26  # target rows gathered per sharded round: about 64 MiB on each rank
# Pool row norms multiplied as stored, per product dtype; others are normalised first.
_SAFE_NORMS = {torch.float32: (2.0**-32, 2.0**32), torch.float64: (2.0**-300, 2.0**300)}


def _as_tensor(x: Any) -> torch.Tensor:
    return x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))


def relevance_scores(
    pool_emb: Any, target_emb: Any, chunk_size: int | None = None, process_group: Any = None
) -> np.ndarray:
    """Max cosine similarity of each pool row to any target row, as a float64 NumPy (N,) array.

    ``chunk_size`` is the number of pool rows per block (default: sized so one block of the
    similarity holds about 4M entries). Works on NumPy arrays and on torch tensors on any device
    (computed there, in float32 for half-precision input); NaN/inf or all-zero rows raise an
    error naming them. With a ``process_group``, both inputs are this rank's contiguous shards
    (in rank order); the result is q for this rank's pool rows, against every rank's targets.
    """
    if process_group is not None:
        return _sharded_relevance(pool_emb, target_emb, chunk_size, process_group)
    pool, pool_norms = check_embeddings(pool_emb, "pool embeddings")
    target, target_norms = check_embeddings(target_emb, "target embeddings", dim=pool.shape[1])
    check_chunk_size(chunk_size)
    x = _as_tensor(pool)
    z = _as_tensor(target)
    # float64 when either side is float64, else float32 (half precision is widened per block).
    dtype = torch.float64 if torch.float64 in (x.dtype, z.dtype) else torch.float32
    z = normalised_targets(z, target_norms, x.device, dtype)
    return max_cosine(
        x,
        pool_norms,
        [z],
        z.shape[0],
        dtype,
        chunk_size,
        unit_rows(pool_norms.min(), pool_norms.max(), dtype),
    )


def check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def unit_rows(low: float, high: float, dtype: torch.dtype) -> bool:
    """Whether pool rows with norms in [low, high] are normalised in float64 before the product,
    so that no finite scale, 1e-300 or 1e300, over- or underflows in the product's dtype."""
    safe_low, safe_high = _SAFE_NORMS[dtype]
    return bool(low < safe_low or high > safe_high)


def normalised_targets(
    z: torch.Tensor, norms: np.ndarray, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Target rows divided by their norms (in float64), in ``dtype`` on ``device``."""
    z = z.to(device=device, dtype=torch.float64)
    return (z / torch.from_numpy(norms).to(device)[:, None]).to(dtype)


def max_cosine(
    x: torch.Tensor,
    pool_norms: np.ndarray,
    targets: Iterable[torch.Tensor],
    num_targets: int,
    dtype: torch.dtype,
    chunk_size: int | None,
    unit: bool,
) -> np.ndarray:
    """q_i for the pool rows ``x`` against normalised target blocks (``num_targets`` rows in
    all), each target block visited once and cut into column blocks; ``unit``: see
    :func:`unit_rows`."""
    n = x.shape[0]
    col_block = min(num_targets, _TARGET_BLOCK)
    rows = int(chunk_size or max(1, _BLOCK_ELEMENTS // col_block))
    if unit:
        rows = min(rows, max(1, _BLOCK_ELEMENTS // x.shape[1]))
    p_norms = torch.from_numpy(pool_norms).to(x.device)
    best = torch.full((n,), -torch.inf, dtype=dtype, device=x.device)
    for z in targets:
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            if unit:
                block = (x[lo:hi].to(torch.float64) / p_norms[lo:hi, None]).to(dtype)
            else:
                block = x[lo:hi].to(dtype)
            for c0 in range(0, z.shape[0], col_block):
                sims = block @ z[c0 : c0 + col_block].T
                torch.maximum(best[lo:hi], sims.amax(dim=1), out=best[lo:hi])
    out = best.to(torch.float64).cpu().numpy()
    if not unit:
        out /= pool_norms
    return np.clip(out, -1.0, 1.0)


def _sharded_relevance(
    pool_emb: Any, target_emb: Any, chunk_size: int | None, group: Any
) -> np.ndarray:
    """``relevance_scores`` of this rank's pool rows against every rank's target rows.

    The normalised targets are all-gathered in rounds of at most about 64 MiB per rank, so no
    rank ever holds more than one round of other ranks' targets; a rank may hold no targets.
    """
    pool = target = target_norms = pool_norms = None
    error = None
    try:
        pool, pool_norms = check_embeddings(pool_emb, "pool embeddings")
        if len(target_emb) == 0:  # fewer targets than ranks: this rank contributes none
            target = torch.empty((0, pool.shape[1]), dtype=_as_tensor(pool).dtype)
            target_norms = np.empty(0)
        else:
            target, target_norms = check_embeddings(
                target_emb, "target embeddings", dim=pool.shape[1]
            )
        check_chunk_size(chunk_size)
    except (ValueError, TypeError) as err:
        error = err
    x = None if pool is None else _as_tensor(pool)
    z = None if target is None else _as_tensor(target)
    local = {
        "d": None if x is None else x.shape[1],
        "m": 0 if z is None else z.shape[0],
        "f64": x is not None and torch.float64 in (x.dtype, z.dtype),
        "norms": None if x is None else (float(pool_norms.min()), float(pool_norms.max())),
    }
    facts = agree(group, "relevance_scores", local, error, ("d",))
    counts = [f["m"] for f in facts]
    if sum(counts) == 0:
        raise DistributedArgumentError("relevance_scores: no rank holds a target row")
    dtype = torch.float64 if any(f["f64"] for f in facts) else torch.float32
    comm = collective_device(group)
    z = normalised_targets(z, target_norms, comm, dtype)
    d, world = x.shape[1], len(counts)
    per_round = min(max(counts), max(1, _GATHER_BYTES // (world * d * dtype.itemsize)))

    def rounds():
        for lo in range(0, max(counts), per_round):
            send = torch.zeros((per_round, d), dtype=dtype, device=comm)
            mine = z[lo : lo + per_round]
            send[: mine.shape[0]] = mine
            recv = torch.empty((world * per_round, d), dtype=dtype, device=comm)
            all_gather_tensor(recv, send, group=group)
            valid = [
                recv[r * per_round : r * per_round + min(per_round, max(0, m - lo))]
                for r, m in enumerate(counts)
            ]
            yield torch.cat(valid).to(x.device)

    unit = unit_rows(min(f["norms"][0] for f in facts), max(f["norms"][1] for f in facts), dtype)
    return max_cosine(x, pool_norms, rounds(), sum(counts), dtype, chunk_size, unit)
