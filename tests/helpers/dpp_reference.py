"""Literal float64 reference implementations of greedy DPP MAP, for the tests and benchmarks.

They are deliberately plain and slow: each follows its source formula step by step so that the
optimised :func:`dpp_select.greedy_dpp` can be checked against readable code. All build the full
kernel L = D K D + jitter I (K = cosine similarity, D = diag(w)), so they need O(N^2) memory.
Every one stops when the best gain falls below ``eps`` and breaks ties towards the lowest index
among gains within ``tie_tol`` (relative) of the best.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cholesky, solve_triangular

__all__ = [
    "dense_kernel",
    "brute_force_greedy",
    "chen_greedy",
    "resolve_greedy",
    "feature_greedy",
    "float32_pass_greedy",
    "GAIN_TIE_MARGIN",
    "assert_gains_close",
    "assert_relevance_close",
]

# The greedy's tie margin (dpp_select/engine/kernel.py): two float64 evaluation orders of one gain differ
# by less than this times max_i L_ii, so gains within it count as ties.
GAIN_TIE_MARGIN = 1e-11


def assert_gains_close(got: np.ndarray, expected: np.ndarray) -> None:
    """Gains of two runs that re-scored in different blocks (other ranks, other BLAS kernels):
    equal up to the float64 rounding between evaluation orders, which the greedy bounds by
    ``GAIN_TIE_MARGIN x max_i L_ii``. The first gain is the largest diagonal entry."""
    np.testing.assert_allclose(got, expected, rtol=0, atol=GAIN_TIE_MARGIN * float(expected[0]))


def assert_relevance_close(got: np.ndarray, expected: np.ndarray, d: int, dtype) -> None:
    """Relevance of the same rows computed in other blocks: each q_i is a dot product of unit
    vectors of length d in ``dtype`` (then rounded once or twice), whose summation order the BLAS
    kernel picks by block shape and vector width. Each result is within (d + 2) u of the exact
    value (u the unit roundoff, Higham's gamma_d plus the normalisation), so two results differ
    by at most 2 (d + 2) u = (d + 2) eps."""
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(got, expected, rtol=0, atol=(d + 2) * eps)


def dense_kernel(emb: np.ndarray, weights: np.ndarray, jitter: float) -> np.ndarray:
    """L = D K D + jitter I in float64, with K the cosine similarity of the rows of ``emb``."""
    x = np.asarray(emb, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    f = x * (w / np.linalg.norm(x, axis=1))[:, None]
    kernel = f @ f.T  # built in place: one N x N array, no temporaries of that size
    kernel[np.diag_indices_from(kernel)] += jitter
    return kernel


def _argmax_lowest(values: np.ndarray, tie_tol: float) -> int:
    best = np.max(values)
    return int(np.flatnonzero(values >= best - tie_tol * abs(best))[0])


def brute_force_greedy(
    L: np.ndarray, k: int, eps: float = 1e-10, tie_tol: float = 1e-9
) -> np.ndarray:
    """Greedy MAP by determinants: gain_i = det(L_{S+i}) / det(L_S) from ``np.linalg.slogdet``."""
    n = L.shape[0]
    chosen: list[int] = []
    logdet_s = 0.0
    for _ in range(k):
        gains = np.full(n, -np.inf)
        for i in range(n):
            if i in chosen:
                continue
            sub = chosen + [i]
            sign, logdet = np.linalg.slogdet(L[np.ix_(sub, sub)])
            gains[i] = sign * np.exp(logdet - logdet_s)
        i = _argmax_lowest(gains, tie_tol)
        if not gains[i] >= eps:
            break
        chosen.append(i)
        logdet_s = np.linalg.slogdet(L[np.ix_(chosen, chosen)])[1]
    return np.asarray(chosen, dtype=np.int64)


def chen_greedy(L: np.ndarray, k: int, eps: float = 1e-10, tie_tol: float = 1e-9) -> np.ndarray:
    """Chen, Zhang & Zhou (NeurIPS 2018), Algorithm 1: incremental Cholesky on the full kernel.

    Keeps c_i (the rows of the Cholesky factor restricted to S) and d_i^2 = gain_i, updating both
    with one row of L per step: O(N k) per step, O(N^2 + N k) memory.
    """
    n = L.shape[0]
    cis = np.zeros((k, n))
    di2 = np.array(np.diag(L), dtype=np.float64)
    chosen: list[int] = []
    for t in range(k):
        j = _argmax_lowest(di2, tie_tol)
        if not di2[j] >= eps:
            break
        chosen.append(j)
        dj = np.sqrt(di2[j])
        e = (L[j, :] - cis[:t, j] @ cis[:t, :]) / dj
        cis[t, :] = e
        di2 -= e * e
        di2[j] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def resolve_greedy(L: np.ndarray, k: int, eps: float = 1e-10, tie_tol: float = 1e-9) -> np.ndarray:
    """The authors' approach: each step re-factors L_S and solves for all candidates.

    gain_i = L_ii - ||C^{-1} L_{S,i}||^2 with C the Cholesky factor of L_S, recomputed from
    scratch each step: O(N t^2) per step, O(N k^3) in total.
    """
    diag = np.array(np.diag(L), dtype=np.float64)
    chosen: list[int] = []
    for _ in range(k):
        if chosen:
            c = cholesky(L[np.ix_(chosen, chosen)], lower=True)
            sol = solve_triangular(c, L[chosen, :], lower=True)
            gains = diag - np.einsum("ij,ij->j", sol, sol)
        else:
            gains = diag.copy()
        gains[chosen] = -np.inf
        j = _argmax_lowest(gains, tie_tol)
        if not gains[j] >= eps:
            break
        chosen.append(j)
    return np.asarray(chosen, dtype=np.int64)


def feature_greedy(
    emb: np.ndarray,
    weights: np.ndarray,
    k: int,
    jitter: float = 0.0,
    eps: float = 1e-10,
    tie_tol: float = 1e-9,
) -> np.ndarray:
    """Plain float64 feature-space greedy (no float32 pass, no error bounds): O(N d) memory.

    The "exact float64 greedy" the fast paths are compared to: phi_i = [f_i ; sqrt(jitter) e_i] and each
    step subtracts the squared projection on the new orthonormal basis vector, all in float64.
    """
    x = np.asarray(emb, dtype=np.float64)
    f = x * (np.asarray(weights, dtype=np.float64) / np.linalg.norm(x, axis=1))[:, None]
    n, d = f.shape
    gains = np.einsum("ij,ij->i", f, f) + jitter
    basis_a = np.zeros((k, d))
    basis_b = np.zeros((k, k))
    chosen: list[int] = []
    for t in range(k):
        j = _argmax_lowest(gains, tie_tol)
        if not gains[j] >= eps:
            break
        p = basis_a[:t] @ f[j]
        r_a = f[j] - basis_a[:t].T @ p
        r_b = -basis_b[:t, : t + 1].T @ p
        r_b[t] += np.sqrt(jitter)
        norm = np.sqrt(r_a @ r_a + r_b @ r_b)
        basis_a[t], basis_b[t, : t + 1] = r_a / norm, r_b / norm
        gains -= (f @ basis_a[t]) ** 2
        chosen.append(j)
        gains[chosen] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def float32_pass_greedy(
    emb: np.ndarray, weights: np.ndarray, k: int, jitter: float = 0.0
) -> np.ndarray:
    """A counter-example, not a reference: the feature-space greedy with a float32 pass and no
    error bounds or float64 re-scoring (gains still float64). On LLM-like embeddings it drifts
    away from the exact picks; tests and benchmarks use it to show that the data is hard enough
    for :func:`dpp_select.greedy_dpp`'s re-scoring to matter.
    """
    x = np.asarray(emb, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float64)
    scale = w / np.linalg.norm(x.astype(np.float64), axis=1)
    gains = w * w + jitter
    basis_a, basis_b = np.zeros((k, x.shape[1])), np.zeros((k, k))
    chosen: list[int] = []
    for t in range(k):
        j = int(np.argmax(gains))
        f = x[j].astype(np.float64) * scale[j]
        p = basis_a[:t] @ f
        r_a = f - basis_a[:t].T @ p
        r_b = -basis_b[:t, : t + 1].T @ p
        r_b[t] += np.sqrt(jitter)
        norm = np.sqrt(r_a @ r_a + r_b @ r_b)
        basis_a[t], basis_b[t, : t + 1] = r_a / norm, r_b / norm
        gains -= ((x @ basis_a[t].astype(np.float32)).astype(np.float64) * scale) ** 2
        chosen.append(j)
        gains[chosen] = -np.inf
    return np.asarray(chosen, dtype=np.int64)
