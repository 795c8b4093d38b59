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

import numpy as np
import torch

from .backends import TorchPass
from .device_rescore import rescore_on_device
from .kernel import MARGIN, GreedyInputs, GreedyResult, extend_basis, finish, run_full_pass

__all__ = ["full_pass_greedy", "run_device_pass"]


def full_pass_greedy(inputs: GreedyInputs) -> GreedyResult:
    """The full-pass greedy for ``inputs.xpass``: on the device for the torch backend, else
    NumPy."""
    run = run_device_pass if isinstance(inputs.xpass, TorchPass) else run_full_pass
    return run(inputs)


class _DeviceGreedy:
    """The full-pass greedy with its O(N) state on ``xpass``'s device and its basis on both
    sides; ``best`` and ``add`` are one pick, everything else in ``__init__`` is set up once."""

    def __init__(self, inputs: GreedyInputs) -> None:
        xpass, w, k, jitter, pool = inputs.xpass, inputs.w, inputs.k, inputs.jitter, inputs.pool
        dev = xpass.device
        self.xpass, self.pool, self.jitter = xpass, pool, jitter
        self.scale_host = w / inputs.norms  # f_i = scale_i * x_i
        base = w * w + jitter  # L_ii
        self.margin = MARGIN * pool.max_diagonal(base)
        self.scale = torch.from_numpy(self.scale_host).to(dev)
        self.w = torch.from_numpy(w).to(dev)
        self.gain = torch.from_numpy(base).to(dev)
        self.err = torch.zeros_like(self.gain)
        self.exact_gain = self.gain.clone()
        self.exact_step = torch.zeros(xpass.n, dtype=torch.int64, device=dev)
        self.basis = torch.zeros(k, xpass.d, dtype=torch.float64, device=dev)
        self.basis_a, self.basis_b = np.zeros((k, xpass.d)), np.zeros((k, k))
        # Work buffers, allocated once: no O(N) allocation (nor, on the CPU, its page faults and
        # unmapping) per pick.
        self.proj, self.e, self.tmp = (torch.empty_like(self.gain) for _ in range(3))
        self.mask = torch.empty(xpass.n, dtype=torch.bool, device=dev)
        self.rescored = self.passes = 0

    def best(self, t: int) -> tuple[float, int]:
        """Bring the gains to step ``t`` (one pass), re-score the stale contenders in float64 on
        the device; return the pool's best exact gain and its index."""
        if t == 0:
            best_lower = float(self.gain.max())
        else:
            a = self.basis_a[t - 1]
            v = self.xpass.project_device(a)
            best_lower = self.fold(v, self.xpass.unit * float(np.linalg.norm(a)))
            self.passes += 1
        threshold = self.pool.best_lower(best_lower) - self.margin
        contenders = self.contenders(threshold)
        stale = contenders[self.err[contenders] > 0.0]
        if stale.numel():
            self.gain[stale] = rescore_on_device(
                self.xpass, stale, t, self.basis, self.scale, self.exact_gain, self.exact_step
            )
            self.err[stale] = 0.0
        self.rescored += stale.numel()
        return self.pool.pick(
            contenders.cpu().numpy(), self.gain[contenders].cpu().numpy(), self.margin
        )

    def add(self, choice: int, t: int) -> bool:
        """Add ``choice`` (a global index) to the basis as a_t and drop it from the candidates;
        False when its residual vanishes."""
        f = self.pool.features(self.xpass, choice, self.scale_host)
        if not extend_basis(f, self.jitter, self.basis_a, self.basis_b, t):
            return False
        self.basis[t] = torch.from_numpy(self.basis_a[t]).to(self.xpass.device)
        row = choice - self.pool.offset
        if 0 <= row < self.xpass.n:
            self.gain[row] = -np.inf
            self.err[row] = 0.0
        return True

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


def run_device_pass(inputs: GreedyInputs) -> GreedyResult:
    """``kernel.run_full_pass`` with the O(N) work on ``inputs.xpass``'s device (module
    docstring); the pool (``kernel.WholePool`` or ``distributed.Shard``) receives host arrays
    of the contenders only."""
    k, eps, pool = inputs.k, inputs.eps, inputs.pool
    greedy = _DeviceGreedy(inputs)
    picks: list[int] = []
    gains: list[float] = []
    for t in range(k):
        best_gain, choice = greedy.best(t)
        if not best_gain >= eps or not greedy.add(choice, t):
            break
        picks.append(choice)
        gains.append(best_gain)
    return finish(picks, gains, pool.total_rescored(greedy.rescored), k, eps, float(greedy.passes))
