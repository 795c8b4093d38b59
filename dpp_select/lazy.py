"""Exact lazy greedy DPP: bring forward only the candidates whose stale gain could still win.

Why it is exact: a candidate's gain g_i(t) = L_ii - sum_{s<t} (f_i . a_s)^2 (``kernel.py``)
never increases with t, since each step subtracts a square (the diminishing returns of log det
that lazy greedy relies on, Minoux 1978). So a bound computed at an earlier step still bounds
the gain now. Each candidate keeps its gain, the rigorous bound on its float32 error, the step
``at_i`` both refer to, and ``ub_i``, the smallest upper bound (gain + error) seen so far. To pick
at step t it suffices to bring to step t every candidate whose ``ub`` reaches the best lower bound
(gain - error) among those already at step t, less the tie margin: every other candidate's exact
gain lies below the best one, so it can neither win nor tie. Bringing candidate i forward folds
in only the basis vectors a_{at_i} .. a_{t-1}: one small float32 product of its row with those
vectors, each entry within the same bound as the full pass (``backends.py``). The contenders are
then re-scored in float64 and the lowest index wins ties, exactly as in the full-pass greedy, so
the picks and gains are the exact float64 greedy's.

Which candidates: a pool holds every candidate whose ``ub`` exceeds a level ``tau`` (everything
outside is known to be at most ``tau``), so a step touches O(pool) bookkeeping, not O(N). Within
it, batches of the highest bounds are brought forward, the batch doubling, until no candidate
left behind can reach the best lower bound; when that bound falls to ``tau`` the pool is rebuilt
with a lower level.

Guard: before each batch the cost of the lazy work (row gathers plus the small products, in
units of reading one row in a pass) is checked against a fixed share of a full pass. When it
would exceed it, the step falls back to a full pass that brings every candidate forward (one
float32 product of X with the basis vectors it missed), and lazy steps are retried after a
cool-down that doubles while they keep failing, so data on which lazy evaluation cannot win
costs a few percent more than the plain full-pass greedy at worst.

Where it runs: every O(N) array (gains, error bounds, steps, weights, exact gains, the pool) is a
torch tensor on the pass's device (``xpass.device``): the torch backend's device, or the CPU for
the NumPy backend, whose arrays become CPU tensors without copies and whose products stay NumPy
BLAS. Per pick, what crosses between host and device is O(d + contenders + batch sizes): the
new basis vector to the device; to the host, the contenders with their exact gains, the chosen
row, and a few scalars per batch (bounds, sizes, costs). The full-pass fallback folds the
device pass (``project_device``) on the device, like ``device_pass.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .backends import NumpyPass
from .device_rescore import rescore_on_device
from .kernel import CHUNK, MARGIN, GreedyResult, WholePool, extend_basis, finish

__all__ = ["run_lazy"]

_BLOCK = 512  # candidates gathered and multiplied at once
_FIRST_BATCH = 64  # smallest first batch of a lazy step
_MIN_POOL = 4096  # smallest pool after a rebuild
_SAMPLE = 8192  # bounds sampled to choose the pool level
# Elements of the (rows x basis vectors) products a full-pass fallback folds at a time: cache
# sized on the CPU, large on an accelerator (fewer kernel launches; 32 MiB per float64 temporary).
_FOLD_ELEMENTS = {"cpu": CHUNK, "other": 1 << 22}
# Cost model, in units of reading one row of X in a full pass (measured with OpenBLAS/MKL on
# x86: a gathered row costs about 1.5 pass rows, each extra basis vector about 0.06; a product
# of X with w > 2 vectors about 2 + 0.05 w passes).
_ROW_COST, _VECTOR_COST = 1.5, 0.06
_WIDE_COST = (2.0, 0.05)
_BUDGET = 0.6  # lazy work allowed per step, as a share of that step's full pass
_MAX_COOLDOWN = 64  # most full-pass steps between two lazy attempts


def run_lazy(
    xpass: Any,
    norms: np.ndarray,
    w: np.ndarray,
    k: int,
    jitter: float,
    eps: float,
    pool: Any = None,
) -> GreedyResult:
    """Lazy greedy with the inputs of ``kernel.run_full_pass``; the same picks, gains and
    stopping rule. ``pool`` is ``kernel.WholePool`` or a ``distributed.Shard``: on a shard each
    rank brings forward its own candidates until none left behind can reach its best lower
    bound; the largest of those bounds over the ranks (never below any rank's own) decides the
    contenders, so every candidate that can reach it has been brought forward."""
    pool = WholePool() if pool is None else pool
    return _LazyGreedy(xpass, norms, w, k, jitter, pool).run(k, eps)


def _torch_flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).squeeze(1)


def _numpy_flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero`` of a CPU mask through NumPy, without copies: several times faster."""
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


class _LazyGreedy:
    def __init__(
        self, xpass: Any, norms: np.ndarray, w: np.ndarray, k: int, jitter: float, shard: Any
    ) -> None:
        n, d, dev = xpass.n, xpass.d, xpass.device
        self.xpass, self.n, self.jitter, self.shard = xpass, n, jitter, shard
        self.host_scale = w / norms  # f_i = scale_i * x_i (the chosen row's features: host)
        base = w * w + jitter
        self.margin = MARGIN * shard.max_diagonal(base)
        self.scale = torch.from_numpy(self.host_scale).to(dev)
        self.w = torch.from_numpy(w).to(dev)
        self.gain = torch.from_numpy(base).to(dev)
        self.err, self.ub = torch.zeros_like(self.gain), self.gain.clone()
        self.at = torch.zeros(n, dtype=torch.int64, device=dev)  # the step gain and err refer to
        self.floor = 0  # every candidate is at a step >= floor
        self.exact_gain, self.exact_step = self.gain.clone(), self.at.clone()
        self.basis_a, self.basis_b = np.zeros((k, d)), np.zeros((k, k))  # extended on the host
        self.basis = torch.zeros(k, d, dtype=torch.float64, device=dev)  # basis_a on the device
        self.bound = torch.zeros(k, dtype=torch.float64, device=dev)  # unit * ||a_s||
        self.pool, self.tau = torch.arange(n, device=dev), -math.inf
        self.pool_ub, self.pool_at = self.ub.clone(), self.at.clone()
        self.batch, self.best_lower = _FIRST_BATCH, -math.inf
        self.work, self.rescored = 0.0, 0
        self.fold_rows = _FOLD_ELEMENTS["cpu" if dev.type == "cpu" else "other"]
        # The NumPy backend's masks are indexed by NumPy (the torch backend's stay on its device).
        numpy_backend = isinstance(xpass, NumpyPass)
        self.flatnonzero = _numpy_flatnonzero if numpy_backend else _torch_flatnonzero

    def run(self, k: int, eps: float) -> GreedyResult:
        picks: list[int] = []
        gains: list[float] = []
        cooldown, backoff = 0, 1
        for t in range(k):
            lazy = False
            if t > 0 and cooldown == 0:
                lazy = self._lazy_step(t)
                if lazy:
                    backoff = 1
                else:
                    cooldown, backoff = backoff, min(2 * backoff, _MAX_COOLDOWN)
            elif cooldown:
                cooldown -= 1
            if not lazy:
                self._full_step(t)
            threshold = self.shard.best_lower(self.best_lower) - self.margin
            if lazy:
                contenders = self.pool[self.flatnonzero(self.pool_ub >= threshold)]
            else:
                contenders = self.flatnonzero(self.ub >= threshold)
            choice, best_gain = self._choose(contenders, t)
            if not best_gain >= eps:
                break
            f = self.shard.features(self.xpass, choice, self.host_scale)
            if not extend_basis(f, self.jitter, self.basis_a, self.basis_b, t):
                break
            self.basis[t] = torch.from_numpy(self.basis_a[t]).to(self.basis.device)
            self.bound[t] = self.xpass.unit * float(np.linalg.norm(self.basis_a[t]))
            picks.append(choice)
            gains.append(best_gain)
            if 0 <= choice - self.shard.offset < self.n:
                self._drop(choice - self.shard.offset)
            if t == 0:
                self._rebuild(math.inf)
        return finish(
            picks, gains, self.shard.total_rescored(self.rescored), k, eps, self.work / self.n
        )

    def _drop(self, row: int) -> None:
        """Remove the picked ``row`` (local index) from the candidates."""
        self.gain[row] = self.ub[row] = -math.inf
        self.err[row] = 0.0
        self.pool_ub.masked_fill_(self.pool == row, -math.inf)

    def _choose(self, contenders: torch.Tensor, t: int) -> tuple[int, float]:
        """Re-score the contenders in float64 where their bound is not exact; the pool picks
        (lowest global index within the margin of the best exact gain)."""
        stale = contenders[self.flatnonzero(self.err[contenders] > 0.0)]
        if stale.numel():
            exact = rescore_on_device(
                self.xpass, stale, t, self.basis, self.scale, self.exact_gain, self.exact_step
            )
            self.gain[stale] = exact
            self.err[stale] = 0.0
            self.ub[stale] = torch.minimum(self.ub[stale], exact)
            self.rescored += stale.numel()
        best_gain, choice = self.shard.pick(
            contenders.cpu().numpy(), self.gain[contenders].cpu().numpy(), self.margin
        )
        return choice, best_gain

    def _fold(self, rows: torch.Tensor | slice, proj: torch.Tensor, first: int, t: int) -> None:
        """Bring ``rows`` from step ``at`` to ``t``; ``proj`` = X[rows] @ a_first..a_{t-1}.

        With e_is = w_i unit ||a_s|| bounding |p_is - exact_is|, the error of the folded-in
        squares is at most sum_s e_is (2 |p_is| + e_is) = w_i (2 sum_s bound_s |p_is| +
        w_i sum_s bound_s^2), summed over the columns a row has not folded in yet.
        """
        at = self.at[rows]
        w = self.w[rows]
        bound = self.bound[first:t]
        p = proj.to(torch.float64) * self.scale[rows, None]  # f_i . a_s, float32 widened
        if at.numel() and int(at.max()) > first:  # columns some rows have already folded in
            p[torch.arange(first, t, device=p.device)[None, :] < at[:, None]] = 0.0
            tail = torch.flip(torch.cumsum(torch.flip(bound * bound, (0,)), 0), (0,))
            squares = torch.cat([tail, tail.new_zeros(1)])[at - first]
        else:
            squares = bound @ bound
        gain = self.gain[rows] - (p * p).sum(dim=1)
        p.abs_()
        err = self.err[rows] + w * (2.0 * (p @ bound) + w * squares)
        self.gain[rows], self.err[rows], self.at[rows] = gain, err, t
        self.ub[rows] = torch.minimum(self.ub[rows], gain + err)

    def _full_step(self, t: int) -> None:
        """Bring every candidate to step ``t`` in one pass on the device; set the best lower
        bound."""
        width = t - self.floor
        v = self.xpass.project_device(self.basis_a[t - 1]) if width == 1 else None
        rows_per_chunk = max(256, self.fold_rows // max(width, 1))
        for lo in range(0, self.n if width else 0, rows_per_chunk):
            rows = slice(lo, min(self.n, lo + rows_per_chunk))
            if v is not None:
                proj = v[rows, None]
            else:
                proj = self.xpass.project_rows(rows, self.basis[self.floor : t])
            self._fold(rows, proj, self.floor, t)
        self.work += self.n * width
        self.floor = t
        self.at.fill_(t)
        self.best_lower = float((self.gain - self.err).max())
        self.pool_ub, self.pool_at = self.ub[self.pool], self.at[self.pool]

    def _lazy_step(self, t: int) -> bool:
        """Bring forward the pool's best bounds until none left behind can win; False: too dear."""
        width = t - self.floor
        passes = width if width <= 2 else _WIDE_COST[0] + _WIDE_COST[1] * width
        budget, spent = _BUDGET * passes * self.n, 0.0
        best_lower, batch, refreshed = -math.inf, self.batch, 0
        if not bool((self.pool_ub > -math.inf).any()):
            self._rebuild(math.inf)
        while True:
            threshold = best_lower - self.margin
            if refreshed and threshold <= self.tau:
                self._rebuild(threshold)
            behind = self.pool_at < t
            if refreshed:
                behind &= self.pool_ub >= threshold
            else:
                behind &= self.pool_ub > -math.inf
            pos = self.flatnonzero(behind)
            if pos.numel() == 0:
                if not refreshed:  # no live candidate left behind: nothing to be lazy about
                    return False
                break
            if (not refreshed or pos.numel() > 2 * batch) and pos.numel() > batch:
                pos = pos[torch.topk(self.pool_ub[pos], batch, sorted=False).indices]
            behind_by = float((t - self.pool_at[pos]).sum())
            cost = pos.numel() * _ROW_COST + _VECTOR_COST * behind_by
            if spent + cost > budget:
                return False
            spent += cost
            rows = self._refresh(pos, t)
            best_lower = max(best_lower, float((self.gain[rows] - self.err[rows]).max()))
            refreshed += pos.numel()
            batch *= 2
        self.best_lower = best_lower
        self.batch = max(_FIRST_BATCH, refreshed // 4)
        return True

    def _refresh(self, pos: torch.Tensor, t: int) -> torch.Tensor:
        """Bring pool entries ``pos`` to step ``t``, in blocks of similar ``at``; return rows."""
        pos = pos[torch.argsort(-self.pool_at[pos], stable=True)]
        rows = self.pool[pos]
        for start in range(0, rows.numel(), _BLOCK):
            block = rows[start : start + _BLOCK]
            first = int(self.at[block[-1]])  # smallest in the block
            self._fold(block, self.xpass.project_rows(block, self.basis[first:t]), first, t)
            self.work += block.numel() * (t - first)
        self.pool_at[pos] = t
        self.pool_ub[pos] = self.ub[rows]
        return rows

    def _rebuild(self, threshold: float) -> None:
        """Pool = every candidate whose bound exceeds a new level below ``threshold``."""
        target = min(self.n, max(_MIN_POOL, 2 * self.pool.numel() if self.tau > -math.inf else 0))
        sample = self.ub[:: max(1, self.n // _SAMPLE)]
        rank = int(sample.numel() * target / self.n)
        level = -math.inf
        if rank < sample.numel():
            level = float(torch.kthvalue(sample, sample.numel() - rank).values)
        # Strictly below both, so that ties at the level join the pool.
        self.tau = float(np.nextafter(min(level, threshold), -math.inf))
        self.pool = self.flatnonzero(self.ub > self.tau)
        self.pool_ub, self.pool_at = self.ub[self.pool], self.at[self.pool]
