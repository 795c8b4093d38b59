"""Exact float64 re-scoring with the greedy's state on the pass's device.

``kernel.rescore`` for state kept in torch tensors on the device (the full-pass greedy of
``device_pass.py``, and the lazy greedy through ``array_ops.TorchOps``): each candidate's gain
is brought forward in float64 from the step at which it was last exact, using only the basis
vectors added since (O((t - t0) d) per candidate), so the picks are those of the exact float64
greedy (Chen et al. 2018's greedy MAP, as ``kernel.py`` formulates it in feature space). What
crosses to the host is one step number per candidate.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["rescore_on_device"]

_RESCORE_BLOCK = 256  # rows gathered at once when re-scoring in float64


def rescore_on_device(
    xpass: Any,
    idx: torch.Tensor,
    t: int,
    basis: torch.Tensor,
    scale: torch.Tensor,
    exact_gain: torch.Tensor,
    exact_step: torch.Tensor,
) -> torch.Tensor:
    """Exact float64 gains of candidates ``idx`` (a device tensor) before step ``t``.

    ``basis`` holds the float64 vectors a_0 .. a_{t-1}; ``exact_gain`` and ``exact_step`` (the
    step each exact gain refers to) are updated in place. Candidates are processed
    most-recently-exact first, in blocks of similar step.
    """
    steps = exact_step[idx]
    order = torch.argsort(-steps, stable=True)
    ordered, first_steps = idx[order], steps[order].cpu().numpy()
    for start in range(0, ordered.numel(), _RESCORE_BLOCK):
        block = ordered[start : start + _RESCORE_BLOCK]
        first = int(first_steps[start : start + _RESCORE_BLOCK].min())
        if first == t:
            continue
        proj = (xpass.device_rows(block) @ basis[first:t].T) * scale[block, None]
        done = torch.arange(first, t, device=idx.device)[None, :] < exact_step[block, None]
        proj[done] = 0.0
        exact_gain[block] -= (proj * proj).sum(dim=1)
        exact_step[block] = t
    return exact_gain[idx]
