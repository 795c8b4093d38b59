"""The greedy kernel of the relevance-weighted DPP, in feature space, shared by every path.

The full-pass greedy (``run_full_pass``), the lazy greedy (``lazy.py``) and the sharded greedy
(``distributed.py``) all build on what is here; ``greedy.py`` chooses among them.

Why feature space: with f_i = w_i x_i / ||x_i|| the kernel is L = F F^T + j I = Phi Phi^T, where
phi_i = [f_i ; sqrt(j) e_i]. The greedy gain det(L_{S+i}) / det(L_S) of candidate i is the squared
distance of phi_i from span{phi_s : s in S}. We keep an orthonormal basis u_t = [a_t ; b_t] of that
span; b_t lives only on the selected items' jitter coordinates, so for a candidate i outside S,
phi_i . u_t = f_i . a_t. Each step is therefore one pass v = X a_t over the embeddings (scaled by
w_i / ||x_i||, so no normalised copy of X exists) and gain_i -= v_i^2, plus O(k d + k^2) to add
the chosen item to the basis. The gains are exactly the d_i^2 of Chen et al. (2018)'s Cholesky
update, jitter included, without the N x N kernel or their N x k factor: memory is X plus O(N + k d
+ k^2).

Why it stays exact with a float32 pass: gains are kept in float64, and every update carries a
rigorous per-candidate bound on the float32 error (see ``backends.py``). Before each pick, every
candidate whose upper bound reaches the best lower bound is re-scored in float64 from the stored
basis (O(k d) at worst, O(d) per step since its last re-scoring in practice) and its bound reset
to zero, so the pick is the argmax of exact float64 gains.
Ties are broken deterministically towards the lowest index; gains closer than 1e-11 x max_i L_ii
(float64 rounding noise between two evaluation orders) count as ties.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._inputs import check_embeddings, is_torch
from .backends import NumpyPass, TorchPass

__all__ = [
    "CHUNK",
    "MARGIN",
    "EarlyStopWarning",
    "GreedyInputs",
    "GreedyResult",
    "NoRelevanceWarning",
    "WholePool",
    "check_scalars",
    "dpp_weights",
    "extend_basis",
    "finish",
    "make_pass",
    "rescore",
    "run_full_pass",
]

logger = logging.getLogger(__name__)

CHUNK = 1 << 14  # rows of bookkeeping at a time: temporaries stay in cache, memory stays O(N)
_RESCORE_BLOCK = 256  # rows gathered at once when re-scoring in float64
_SMALL_PRODUCT = 1 << 24  # multiply-adds below which threads cost more than they save
MARGIN = 1e-11  # relative slack covering float64 rounding between update and re-score orders


class EarlyStopWarning(UserWarning):
    """Greedy selection stopped before k items because the best remaining gain fell below eps."""


class NoRelevanceWarning(UserWarning):
    """Every relevance score is <= 0, so every DPP weight is 0 and the picks are in index order."""


@dataclass(frozen=True)
class GreedyResult:
    """Picks in greedy order with their gains det(L_{S+i}) / det(L_S) and work counters.

    ``rescored`` counts float64 re-scorings triggered by the float32 error bounds (the price of
    exactness); ``stopped_early`` is True when fewer than the requested items were selected;
    ``passes`` is the multiply-add work of the float32 products with X in units of one full pass
    (N d multiply-adds): one per step for the full-pass greedy, less with ``lazy``.
    """

    indices: np.ndarray
    gains: np.ndarray
    rescored: int
    stopped_early: bool
    passes: float = 0.0


def dpp_weights(quality: Any, n: int, beta: float) -> np.ndarray:
    """Weights w_i = max(q_i, 0)^beta in float64 (all ones when ``quality`` is None).

    Negative relevance is clamped to 0 before the power because a fractional power of a negative
    number is undefined; such items keep weight 0 for beta > 0 (only the jitter can select them)
    and weight 1 for beta = 0, where quality is ignored by definition (0^0 = 1).
    """
    if isinstance(beta, bool) or not (
        isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 0
    ):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if quality is None:
        return np.ones(n, dtype=np.float64)
    if is_torch(quality):
        quality = quality.detach().to(torch.float64).cpu().numpy()
    q = np.asarray(quality, dtype=np.float64)
    if q.shape != (n,):
        raise ValueError(f"quality must have shape ({n},) to match the embeddings, got {q.shape}")
    bad = np.flatnonzero(~np.isfinite(q))
    if bad.size:
        raise ValueError(f"quality holds NaN or inf at indices {bad[:10].tolist()}")
    if beta > 0 and n > 0 and not (q > 0).any():
        warnings.warn(
            "every relevance score is <= 0, so every weight max(q, 0)^beta is 0 and the kernel "
            "is jitter x I: all candidates tie and the picks are simply pool indices 0, 1, 2, "
            "...; check that the pool and the targets were embedded with the same model, or use "
            "beta=0 (diversity only)",
            NoRelevanceWarning,
            stacklevel=3,
        )
    return np.power(np.maximum(q, 0.0), float(beta))


def make_pass(emb: Any, backend: str, device: Any) -> tuple[Any, np.ndarray]:
    if backend == "auto":
        backend = "torch" if is_torch(emb) or device is not None else "numpy"
    if backend == "numpy":
        if device is not None:
            raise ValueError("device applies to backend='torch' only")
        if is_torch(emb):
            emb = emb.detach()
            if emb.dtype == torch.bfloat16:
                emb = emb.to(torch.float32)
            emb = emb.cpu().numpy()
        x, norms = check_embeddings(emb, "embeddings")
        xpass = NumpyPass(x, norms)
        return xpass, xpass.norms
    if backend == "torch":
        if not is_torch(emb):
            emb = torch.from_numpy(np.asarray(emb))
        x, norms = check_embeddings(emb, "embeddings")
        xpass = TorchPass(x, norms, device)
        return xpass, xpass.norms
    raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")


def check_scalars(k: Any, jitter: Any, eps: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter must be finite and >= 0, got {jitter!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")


class WholePool:
    """The pool held by this process alone. ``run_full_pass`` asks its pool for what changes
    when the pool is sharded across processes (``distributed.Shard``): the largest L_ii, the
    best lower bound (which decides the re-scoring), the pick among the contenders and its
    features."""

    offset = 0  # global index of this process's first row

    def max_diagonal(self, base: np.ndarray) -> float:
        return float(base.max())

    def best_lower(self, value: float) -> float:
        return value

    def pick(self, contenders: np.ndarray, values: np.ndarray, margin: float) -> tuple[float, int]:
        """Best exact gain and its (lowest) index; gains within ``margin`` of it are ties."""
        best = float(values.max())
        return best, int(contenders[np.flatnonzero(values >= best - margin)[0]])

    def features(self, xpass: Any, choice: int, scale: np.ndarray) -> np.ndarray:
        """f_choice = scale x row, float64."""
        return xpass.rows(np.array([choice]))[0] * scale[choice]

    def total_rescored(self, count: int) -> int:
        return count


@dataclass(frozen=True)
class GreedyInputs:
    """What every greedy runner takes (full pass, on the device, lazy): the pass over the
    embeddings ``xpass`` and their norms, the DPP weights ``w``, the ``k`` picks asked for, the
    kernel's ``jitter``, the stopping gain ``eps``, and the ``pool``: :class:`WholePool` for one
    process, or ``distributed.Shard`` for this rank's block of a sharded pool."""

    xpass: Any
    norms: np.ndarray
    w: np.ndarray
    k: int
    jitter: float
    eps: float
    pool: Any = field(default_factory=WholePool)


def run_full_pass(inputs: GreedyInputs) -> GreedyResult:
    """The full-pass greedy: one float32 pass over the pool per pick (module docstring)."""
    xpass, w, k, jitter, pool = inputs.xpass, inputs.w, inputs.k, inputs.jitter, inputs.pool
    n, d = xpass.n, xpass.d
    scale = w / inputs.norms  # f_i = scale_i * x_i
    base = w * w + jitter  # L_ii: cos(x_i, x_i) = 1
    gain = base.copy()
    err = np.zeros(n)  # rigorous bound on |gain - exact float64 gain|
    exact_gain = base.copy()  # float64 gain of each candidate at step exact_step
    exact_step = np.zeros(n, dtype=np.int32)
    basis_a = np.zeros((k, d))
    basis_b = np.zeros((k, k))
    v = np.empty(n, dtype=xpass.pass_dtype)
    t1, t2, t3 = (np.empty(min(n, CHUNK)) for _ in range(3))
    margin = MARGIN * pool.max_diagonal(base)
    picks: list[int] = []
    gains: list[float] = []
    rescored = passes = 0
    chunks = [(lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]
    ub_max = np.empty(len(chunks))

    for t in range(k):
        if t == 0:
            best_lower = float(gain.max())
            ub_max[:] = [gain[lo:hi].max() for lo, hi in chunks]
        else:
            a = basis_a[t - 1]
            bound = xpass.unit * float(np.linalg.norm(a))
            xpass.project(a, v)
            passes += 1
            best_lower = _fold_pass(v, scale, w, bound, gain, err, chunks, (t1, t2, t3), ub_max)
        threshold = pool.best_lower(best_lower) - margin
        # (A shard of a distributed pool may hold no contender at all.)
        contenders = np.concatenate(
            [np.empty(0, dtype=np.intp)]
            + [
                lo + np.flatnonzero(gain[lo:hi] + err[lo:hi] >= threshold)
                for c, (lo, hi) in enumerate(chunks)
                if ub_max[c] >= threshold
            ]
        )
        stale = contenders[err[contenders] > 0.0]
        if stale.size:
            gain[stale] = rescore(xpass, stale, t, basis_a, scale, exact_gain, exact_step)
            err[stale] = 0.0
        rescored += stale.size
        # Gains within the rounding margin of the best are ties; the lowest index wins.
        best_gain, choice = pool.pick(contenders, gain[contenders], margin)
        if not best_gain >= inputs.eps:
            break
        f = pool.features(xpass, choice, scale)
        if not extend_basis(f, jitter, basis_a, basis_b, t):
            break
        picks.append(choice)
        gains.append(best_gain)
        if 0 <= choice - pool.offset < n:
            gain[choice - pool.offset] = -np.inf
            err[choice - pool.offset] = 0.0
    return finish(picks, gains, pool.total_rescored(rescored), k, inputs.eps, float(passes))


def _fold_pass(
    v: np.ndarray,
    scale: np.ndarray,
    w: np.ndarray,
    bound: float,
    gain: np.ndarray,
    err: np.ndarray,
    chunks: list[tuple[int, int]],
    temps: tuple,
    ub_max: np.ndarray,
) -> float:
    """Subtract the squares of one float32 pass ``v`` = X a_t from the gains, chunk by chunk,
    adding their rigorous error bound to ``err``; set each chunk's largest upper bound in
    ``ub_max`` and return the best lower bound."""
    t1, t2, t3 = temps
    best_lower = -np.inf
    for c, (lo, hi) in enumerate(chunks):
        m = hi - lo
        proj, e, tmp = t1[:m], t2[:m], t3[:m]
        g, r = gain[lo:hi], err[lo:hi]
        np.multiply(v[lo:hi], scale[lo:hi], out=proj)  # f_i . a_t (float32 pass)
        np.multiply(w[lo:hi], bound, out=e)  # |proj error| <= e
        np.abs(proj, out=tmp)
        tmp *= 2.0
        tmp += e
        tmp *= e  # |proj^2 - exact^2| <= e (2|proj| + e)
        r += tmp
        np.multiply(proj, proj, out=proj)
        g -= proj
        np.subtract(g, r, out=tmp)
        best_lower = max(best_lower, float(tmp.max()))
        np.add(g, r, out=tmp)
        ub_max[c] = tmp.max()
    return best_lower


def finish(
    picks: list[int], gains: list[float], rescored: int, k: int, eps: float, passes: float
) -> GreedyResult:
    """Warn when fewer than ``k`` items were picked and package the result."""
    stopped = len(picks) < k
    if stopped:
        message = (
            f"greedy DPP selected {len(picks)} of the {k} requested items: the best remaining "
            f"gain det(L_S+i)/det(L_S) fell below eps={eps:g}, i.e. the kernel's rank is "
            "exhausted (more items than distinct directions, or too many zero weights); add "
            "jitter > 0, lower eps, or ask for fewer items"
        )
        warnings.warn(message, EarlyStopWarning, stacklevel=4)  # once: not also logged
    logger.debug("greedy DPP: %d picks, %d float64 re-scorings", len(picks), rescored)
    return GreedyResult(
        np.asarray(picks, dtype=np.int64), np.asarray(gains), rescored, stopped, passes
    )


def extend_basis(
    f: np.ndarray, jitter: float, basis_a: np.ndarray, basis_b: np.ndarray, t: int
) -> bool:
    """Append the normalised residual of phi_choice = [f ; sqrt(jitter) e_t] to the basis.

    Classical Gram-Schmidt, repeated once only when the first pass cancelled more than half of
    the norm ("twice is enough", Kahan/Parlett), which is when orthogonality would suffer. In the
    first pass phi_choice's jitter part sqrt(j) e_t is orthogonal to every earlier b (they live
    on earlier items), so only the feature part is projected. The O(k d) products use
    ``einsum`` (single-threaded C loops) rather than BLAS: on a shared machine, waking BLAS
    threads for a (k x d) matrix-vector product costs several times the product itself.
    Returns False when the residual vanishes (only possible with eps = 0).
    """
    a_prev, b_prev = basis_a[:t], basis_b[:t, : t + 1]
    coef = np.einsum("ij,j->i", a_prev, f)
    r_a = f - np.einsum("ij,i->j", a_prev, coef)
    r_b = np.zeros(t + 1)
    if jitter > 0.0:
        r_b -= np.einsum("ij,i->j", b_prev, coef)
        r_b[t] = math.sqrt(jitter)
    before = float(f @ f) + jitter
    after = float(r_a @ r_a + r_b @ r_b)
    if after < 0.5 * before:
        coef = np.einsum("ij,j->i", a_prev, r_a)
        if jitter > 0.0:
            coef += np.einsum("ij,j->i", b_prev, r_b)
            r_b -= np.einsum("ij,i->j", b_prev, coef)
        r_a -= np.einsum("ij,i->j", a_prev, coef)
        after = float(r_a @ r_a + r_b @ r_b)
    norm = math.sqrt(after)
    if not norm > 0.0:
        return False
    basis_a[t] = r_a / norm
    basis_b[t, : t + 1] = r_b / norm
    return True


def rescore(
    xpass: Any,
    idx: np.ndarray,
    t: int,
    basis_a: np.ndarray,
    scale: np.ndarray,
    exact_gain: np.ndarray,
    exact_step: np.ndarray,
) -> np.ndarray:
    """Exact float64 gains of candidates ``idx`` before step ``t``.

    Each candidate's gain is brought forward from the step at which it was last exact, using
    only the basis vectors added since: O((t - t0) d) instead of O(t d). The candidates that
    need re-scoring are mostly the leaders of the previous steps, so t - t0 is usually small.
    Candidates are processed most-recently-exact first, in blocks of similar t0.
    """
    order = idx[np.argsort(-exact_step[idx], kind="stable")]
    for start in range(0, order.size, _RESCORE_BLOCK):
        block = order[start : start + _RESCORE_BLOCK]
        first = int(exact_step[block].min())
        if first == t:
            continue
        proj = _rows_times_basis(xpass.rows(block), basis_a[first:t]) * scale[block, None]
        proj[np.arange(t - first)[None, :] < (exact_step[block] - first)[:, None]] = 0.0
        exact_gain[block] -= np.einsum("ij,ij->i", proj, proj)
        exact_step[block] = t
    return exact_gain[idx]


def _rows_times_basis(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``rows @ basis.T``: single-threaded einsum for the usual few rows, BLAS for many."""
    if rows.shape[0] * basis.size < _SMALL_PRODUCT:
        return np.einsum("ij,kj->ik", rows, basis)
    return rows @ basis.T
