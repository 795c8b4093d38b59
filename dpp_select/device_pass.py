"""The full-pass greedy with its per-pick bookkeeping on the torch backend's device.

Same algorithm, bounds and tie rule as ``kernel.run_full_pass`` (whose module docstring gives
the feature-space formulation of Chen et al. (2018)'s greedy MAP and why a float32 pass stays
exact), with every O(N) array on the device that holds the embeddings: the float64 gains, their
float32 error bounds, the weights, and the exact gains kept for float64 re-scoring. Per pick:

1. the pass ``v = X a_t`` (``TorchPass.project_device``: X read once as stored);
2. the fold ``gain -= (scale v)^2`` with its error bound, in float64, as whole-tensor operations
   in the order of ``kernel._fold_pass`` (so the gains are bitwise those of the NumPy backend on
   the CPU, up to the float64 re-scoring, which sums in a different order);
3. the contenders (upper bound >= best lower bound - margin) chosen on the device, the stale ones
   re-scored in float64 on the device from the basis kept there;
4. to the host: the best lower bound (8 bytes), the contenders with their exact gains, the
   chosen row (d values); from the host: the new basis vector (d values).

What crosses between host and device, and the Python work, per pick is O(d + contenders),
independent of N; extending the basis on the host is O(k d).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .backends import TorchPass
from .kernel import MARGIN, GreedyResult, WholePool, extend_basis, finish, run_full_pass

__all__ = ["full_pass_greedy", "run_device_pass"]

_RESCORE_BLOCK = 256  # rows gathered at once when re-scoring in float64


def full_pass_greedy(
    xpass: Any,
    norms: np.ndarray,
    w: np.ndarray,
    k: int,
    jitter: float,
    eps: float,
    pool: Any = None,
) -> GreedyResult:
    """The full-pass greedy for ``xpass``: on the device for the torch backend, else NumPy."""
    run = run_device_pass if isinstance(xpass, TorchPass) else run_full_pass
    return run(xpass, norms, w, k, jitter, eps, pool)


class _DeviceState:
    """The O(N) state of the greedy on the device, and the float64 basis there."""

    def __init__(
        self, xpass: TorchPass, scale: np.ndarray, w: np.ndarray, base: np.ndarray, k: int
    ) -> None:
        dev = xpass.device
        self.scale = torch.from_numpy(scale).to(dev)
        self.w = torch.from_numpy(w).to(dev)
        self.gain = torch.from_numpy(base).to(dev)
        self.err = torch.zeros_like(self.gain)
        self.exact_gain = self.gain.clone()
        self.exact_step = torch.zeros(xpass.n, dtype=torch.int64, device=dev)
        self.basis = torch.zeros(k, xpass.d, dtype=torch.float64, device=dev)
        # Work buffers, allocated once: no O(N) allocation (nor, on the CPU, its page faults and
        # unmapping) per pick.
        self.proj, self.e, self.tmp = (torch.empty_like(self.gain) for _ in range(3))
        self.mask = torch.empty(xpass.n, dtype=torch.bool, device=dev)

    def fold(self, v: torch.Tensor, bound: float) -> float:
        """``kernel._fold_pass`` on the device: subtract the squares of the pass, add their
        error bound; return the best lower bound."""
        proj, e, tmp = self.proj, self.e, self.tmp
        torch.mul(v, self.scale, out=proj)  # f_i . a_t, float64 (v widened exactly)
        torch.mul(self.w, bound, out=e)  # |proj error| <= e
        torch.abs(proj, out=tmp)
        tmp.mul_(2.0).add_(e).mul_(e)  # |proj^2 - exact^2| <= e (2|proj| + e)
        self.err.add_(tmp)
        proj.mul_(proj)
        self.gain.sub_(proj)
        torch.sub(self.gain, self.err, out=tmp)
        return float(tmp.max())

    def contenders(self, threshold: float) -> torch.Tensor:
        """Indices whose upper bound (gain + err) reaches ``threshold``."""
        torch.add(self.gain, self.err, out=self.tmp)
        torch.ge(self.tmp, threshold, out=self.mask)
        return torch.nonzero(self.mask).squeeze(1)

    def rescore(self, xpass: TorchPass, idx: torch.Tensor, t: int) -> torch.Tensor:
        """Exact float64 gains of candidates ``idx`` before step ``t`` (``kernel.rescore``):
        each brought forward from the step it was last exact at, in blocks of similar step."""
        steps = self.exact_step[idx]
        order = torch.argsort(-steps, stable=True)
        idx, first_steps = idx[order], steps[order].cpu().numpy()
        for start in range(0, idx.numel(), _RESCORE_BLOCK):
            block = idx[start : start + _RESCORE_BLOCK]
            first = int(first_steps[start : start + _RESCORE_BLOCK].min())
            if first == t:
                continue
            proj = (xpass.device_rows(block) @ self.basis[first:t].T) * self.scale[block, None]
            done = torch.arange(first, t, device=idx.device)[None, :] < self.exact_step[block, None]
            proj[done] = 0.0
            self.exact_gain[block] -= (proj * proj).sum(dim=1)
            self.exact_step[block] = t
        return self.exact_gain


def run_device_pass(
    xpass: TorchPass,
    norms: np.ndarray,
    w: np.ndarray,
    k: int,
    jitter: float,
    eps: float,
    pool: Any = None,
) -> GreedyResult:
    """``kernel.run_full_pass`` with the O(N) work on ``xpass``'s device (module docstring).

    ``pool`` is ``kernel.WholePool`` for one process or ``distributed.Shard`` for this rank's
    block of a sharded pool; it receives host arrays of the contenders only."""
    pool = WholePool() if pool is None else pool
    n = xpass.n
    scale = w / norms  # f_i = scale_i * x_i
    base = w * w + jitter  # L_ii
    state = _DeviceState(xpass, scale, w, base, k)
    basis_a, basis_b = np.zeros((k, xpass.d)), np.zeros((k, k))
    margin = MARGIN * pool.max_diagonal(base)
    picks: list[int] = []
    gains: list[float] = []
    rescored = passes = 0
    for t in range(k):
        if t == 0:
            best_lower = float(state.gain.max())
        else:
            a = basis_a[t - 1]
            best_lower = state.fold(xpass.project_device(a), xpass.unit * float(np.linalg.norm(a)))
            passes += 1
        threshold = pool.best_lower(best_lower) - margin
        contenders = state.contenders(threshold)
        stale = contenders[state.err[contenders] > 0.0]
        if stale.numel():
            state.gain[stale] = state.rescore(xpass, stale, t)[stale]
            state.err[stale] = 0.0
        rescored += stale.numel()
        best_gain, choice = pool.pick(
            contenders.cpu().numpy(), state.gain[contenders].cpu().numpy(), margin
        )
        if not best_gain >= eps:
            break
        f = pool.features(xpass, choice, scale)
        if not extend_basis(f, jitter, basis_a, basis_b, t):
            break
        state.basis[t] = torch.from_numpy(basis_a[t]).to(xpass.device)
        picks.append(choice)
        gains.append(best_gain)
        if 0 <= choice - pool.offset < n:
            state.gain[choice - pool.offset] = -np.inf
            state.err[choice - pool.offset] = 0.0
    return finish(picks, gains, pool.total_rescored(rescored), k, eps, float(passes))
