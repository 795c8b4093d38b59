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

Where it runs: the O(N) state (gains, error bounds, steps, weights, exact gains, the pool) is
written once against an array namespace chosen by the pass's device (``array_ops.py``): NumPy
arrays on the CPU, whichever backend holds the embeddings, and torch tensors on an accelerator.
There, per pick, what crosses between host and device is O(d + contenders + batch sizes): the
new basis vector to the device; to the host, the contenders with their exact gains, the chosen
row, and a few scalars per batch and per chunk of a full pass (bounds, sizes, costs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .array_ops import for_device
from .kernel import MARGIN, GreedyInputs, GreedyResult, extend_basis, finish

__all__ = ["run_lazy"]

_BLOCK = 512  # candidates gathered and multiplied at once
_FIRST_BATCH = 64  # smallest first batch of a lazy step
_MIN_POOL = 4096  # smallest pool after a rebuild
_SAMPLE = 8192  # bounds sampled to choose the pool level
# Cost model, in units of reading one row of X in a full pass (measured with OpenBLAS/MKL on
# x86: a gathered row costs about 1.5 pass rows, each extra basis vector about 0.06; a product
# of X with w > 2 vectors about 2 + 0.05 w passes).
_ROW_COST, _VECTOR_COST = 1.5, 0.06
_WIDE_COST = (2.0, 0.05)
_BUDGET = 0.6  # lazy work allowed per step, as a share of that step's full pass
_MAX_COOLDOWN = 64  # most full-pass steps between two lazy attempts


def run_lazy(inputs: GreedyInputs) -> GreedyResult:
    """Lazy greedy with the inputs of ``kernel.run_full_pass``; the same picks, gains and
    stopping rule. The pool is ``kernel.WholePool`` or a ``distributed.Shard``: on a shard each
    rank brings forward its own candidates until none left behind can reach its best lower
    bound; the largest of those bounds over the ranks (never below any rank's own) decides the
    contenders, so every candidate that can reach it has been brought forward."""
    greedy = _LazyGreedy(inputs.xpass, inputs.norms, inputs.w, inputs.k, inputs.jitter, inputs.pool)
    return greedy.run(inputs.k, inputs.eps)


class _LazyGreedy:
    def __init__(
        self, xpass: Any, norms: np.ndarray, w: np.ndarray, k: int, jitter: float, shard: Any
    ) -> None:
        n, d = xpass.n, xpass.d
        self.ops = ops = for_device(xpass.device)
        self.xpass, self.n, self.jitter, self.shard = xpass, n, jitter, shard
        self.host_scale = w / norms  # f_i = scale_i * x_i (the chosen row's features: host)
        base = w * w + jitter
        self.margin = MARGIN * shard.max_diagonal(base)
        self.scale, self.w = ops.asarray(self.host_scale), ops.asarray(w)
        self.gain, self.err = ops.asarray(base), ops.zeros(n)
        self.ub = ops.copy(self.gain)
        self.at = ops.zeros(n, ops.step_dtype)  # the step gain and err refer to
        self.floor = 0  # every candidate is at a step >= floor
        self.exact_gain, self.exact_step = ops.copy(self.gain), ops.copy(self.at)
        self.basis_a, self.basis_b = np.zeros((k, d)), np.zeros((k, k))  # extended on the host
        self.basis = ops.asarray(self.basis_a)  # on the host: basis_a itself
        self.bound = ops.zeros(k)  # unit * ||a_s||: per-weight error of one projection
        self.pool, self.tau = ops.arange(n), -math.inf
        self.pool_ub, self.pool_at = ops.copy(self.ub), ops.copy(self.at)
        self.batch, self.best_lower = _FIRST_BATCH, -math.inf
        self.work, self.rescored = 0.0, 0

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
            if lazy:
                threshold = self.shard.best_lower(self.best_lower) - self.margin
                contenders = self.pool[self.pool_ub >= threshold]
            else:
                contenders = self._full_step(t)
                threshold = self.shard.best_lower(self.best_lower) - self.margin
                contenders = contenders[self.ub[contenders] >= threshold]
            choice, best_gain = self._choose(contenders, t)
            if not best_gain >= eps:
                break
            f = self.shard.features(self.xpass, choice, self.host_scale)
            if not extend_basis(f, self.jitter, self.basis_a, self.basis_b, t):
                break
            self.basis[t] = self.ops.asarray(self.basis_a[t])  # on the host: itself
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
        at_pool = self.ops.searchsorted(self.pool, row)
        if at_pool < len(self.pool) and int(self.pool[at_pool]) == row:
            self.pool_ub[at_pool] = -math.inf

    def _choose(self, contenders: Any, t: int) -> tuple[int, float]:
        """Re-score the contenders in float64 where their bound is not exact; the pool picks
        (lowest global index within the margin of the best exact gain)."""
        ops = self.ops
        stale = contenders[self.err[contenders] > 0.0]
        if len(stale):
            exact = ops.rescore(
                self.xpass, stale, t, self.basis, self.scale, self.exact_gain, self.exact_step
            )
            self.gain[stale] = exact
            self.err[stale] = 0.0
            self.ub[stale] = ops.minimum(self.ub[stale], exact)
            self.rescored += len(stale)
        best_gain, choice = self.shard.pick(
            ops.to_host(contenders), ops.to_host(self.gain[contenders]), self.margin
        )
        return choice, best_gain

    def _fold(self, rows: Any, proj: Any, first: int, t: int) -> None:
        """Bring ``rows`` (indices or a slice) from step ``at`` to ``t``; ``proj`` = X[rows] @
        a_first..a_{t-1}.

        With e_is = w_i unit ||a_s|| bounding |p_is - exact_is|, the error of the folded-in
        squares is at most sum_s e_is (2 |p_is| + e_is) = w_i (2 sum_s bound_s |p_is| +
        w_i sum_s bound_s^2), summed over the columns a row has not folded in yet.
        """
        ops = self.ops
        at = self.at[rows]
        w = self.w[rows]
        bound = self.bound[first:t]
        p = proj * self.scale[rows, None]  # f_i . a_s, float64 from the float32 product
        if len(at) and int(at.max()) > first:  # columns some rows have already folded in
            p[ops.arange(first, t)[None, :] < at[:, None]] = 0.0
            squares = ops.suffix_sums(bound * bound)[at - first]
        else:
            squares = bound @ bound
        self.gain[rows] -= ops.einsum("ij,ij->i", p, p)
        ops.absolute(p, out=p)
        self.err[rows] += w * (2.0 * ops.einsum("ij,j->i", p, bound) + w * squares)
        self.at[rows] = t
        self.ub[rows] = ops.minimum(self.ub[rows], self.gain[rows] + self.err[rows])

    def _full_step(self, t: int) -> Any:
        """Bring every candidate to step ``t`` in one pass; return the contenders."""
        ops, width = self.ops, t - self.floor
        v = ops.project(self.xpass, self.basis_a[t - 1]) if width == 1 else None
        rows_per_chunk = ops.fold_elements
        if width > 1:
            rows_per_chunk = max(256, rows_per_chunk // width)
        chunks = [(lo, min(self.n, lo + rows_per_chunk)) for lo in range(0, self.n, rows_per_chunk)]
        lower, upper = ops.empty(len(chunks)), ops.empty(len(chunks))
        for c, (lo, hi) in enumerate(chunks):
            rows = slice(lo, hi)
            if v is not None:
                self._fold(rows, v[lo:hi, None], t - 1, t)
            elif width > 1:
                basis = self.basis[self.floor : t]
                self._fold(rows, ops.project_rows(self.xpass, rows, basis), self.floor, t)
            lower[c] = (self.gain[rows] - self.err[rows]).max()
            upper[c] = self.ub[rows].max()
        self.work += self.n * width
        self.floor = t
        self.at[:] = t
        self.best_lower = float(lower.max())
        threshold = self.best_lower - self.margin
        self.pool_ub, self.pool_at = self.ub[self.pool], self.at[self.pool]
        upper = ops.to_host(upper)
        return ops.concatenate(
            [
                lo + ops.flatnonzero(self.ub[lo:hi] >= threshold)
                for c, (lo, hi) in enumerate(chunks)
                if upper[c] >= threshold
            ]
        )

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
            pos = self.ops.flatnonzero(behind)
            if len(pos) == 0:
                if not refreshed:  # no live candidate left behind: nothing to be lazy about
                    return False
                break
            if (not refreshed or len(pos) > 2 * batch) and len(pos) > batch:
                pos = pos[self.ops.top_indices(self.pool_ub[pos], batch)]
            cost = len(pos) * _ROW_COST + _VECTOR_COST * float((t - self.pool_at[pos]).sum())
            if spent + cost > budget:
                return False
            spent += cost
            rows = self._refresh(pos, t)
            best_lower = max(best_lower, float((self.gain[rows] - self.err[rows]).max()))
            refreshed += len(pos)
            batch *= 2
        self.best_lower = best_lower
        self.batch = max(_FIRST_BATCH, refreshed // 4)
        return True

    def _refresh(self, pos: Any, t: int) -> Any:
        """Bring pool entries ``pos`` to step ``t``, in blocks of similar ``at``; return rows."""
        pos = pos[self.ops.stable_argsort(-self.pool_at[pos])]
        rows = self.pool[pos]
        for start in range(0, len(rows), _BLOCK):
            block = rows[start : start + _BLOCK]
            first = int(self.at[block[-1]])  # smallest in the block
            proj = self.ops.project_rows(self.xpass, block, self.basis[first:t])
            self._fold(block, proj, first, t)
            self.work += len(block) * (t - first)
        self.pool_at[pos] = t
        self.pool_ub[pos] = self.ub[rows]
        return rows

    def _rebuild(self, threshold: float) -> None:
        """Pool = every candidate whose bound exceeds a new level below ``threshold``."""
        target = min(self.n, max(_MIN_POOL, 2 * len(self.pool) if self.tau > -math.inf else 0))
        sample = self.ub[:: max(1, self.n // _SAMPLE)]
        rank = int(len(sample) * target / self.n)
        level = -math.inf
        if rank < len(sample):
            level = self.ops.kth_smallest(sample, len(sample) - 1 - rank)
        # Strictly below both, so that ties at the level join the pool.
        self.tau = float(np.nextafter(min(level, threshold), -math.inf))
        self.pool = self.ops.flatnonzero(self.ub > self.tau)
        self.pool_ub, self.pool_at = self.ub[self.pool], self.at[self.pool]
