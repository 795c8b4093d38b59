r"""SafeGrad: gradient surgery that removes the part of the utility step that hurts safety.

Yi et al. 2025, "Gradient Surgery for Safe LLM Fine-Tuning" (SafeGrad). With the utility
gradient :math:`g_u` (in ``p.grad``, computed by the caller) and the safety gradient
:math:`g_s = \nabla L_{safe}(\theta)` at the same parameters, both flattened over every
parameter of every group:

.. math::
    g_u \leftarrow \begin{cases}
        g_u - \dfrac{\langle g_u, g_s\rangle}{\lVert g_s\rVert^2}\, g_s & \langle g_u, g_s\rangle < 0 \\
        g_u & \text{otherwise}
    \end{cases}

and the inner optimizer steps on the result. A conflicting utility step is thus projected onto
the plane orthogonal to :math:`g_s`: to first order it no longer increases the safety loss. The
paper computes :math:`g_s` from a KL-divergence alignment loss against the aligned model's
outputs; any scalar loss works here, through the safety closure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..functional import accumulation_dtype, global_sq_norm
from ..safety_wrapper import SafetyClosureOptimizer, ensure_grads

__all__ = ["SafeGradOptimizer"]


class SafeGradOptimizer(SafetyClosureOptimizer):
    """Project the utility gradient off the safety gradient when they conflict, then step.

    Args:
        inner: the optimizer that takes the step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the scalar safety (alignment) loss with its graph at
            the current parameters.
    """

    STATE_KEY = "safegrad"
    STATE_FIELDS = SafetyClosureOptimizer.STATE_FIELDS + ("num_conflicts",)
    INTERVENTIONS = "num_conflicts"
    COUNTERS = ("num_conflicts",)

    def __init__(self, inner: torch.optim.Optimizer, safety_closure: Callable[[], Tensor]) -> None:
        super().__init__(inner, safety_closure)
        self._num_conflicts = 0

    @property
    def num_conflicts(self) -> int:
        """Steps whose utility gradient conflicted with safety and was projected."""
        return self._num_conflicts

    def _before_inner_step(self, params: list[Tensor]) -> None:
        self.last_stats = self._surgery(params)

    def _surgery(self, params: list[Tensor]) -> dict:
        loss = self._safety_loss()
        value = float(loss.detach())
        if not math.isfinite(value):
            self._skip_nonfinite("loss", value)
            return {"safety_loss": value, "conflict": False, "cosine": 0.0}
        safety = self._safety_grads(loss, params)
        device = params[0].device
        with torch.no_grad():
            utility = [p.grad for p in params if p.grad is not None]
            paired = [g for p, g in zip(params, safety) if p.grad is not None]
            acc = torch.float32
            for t in utility + safety:
                acc = torch.promote_types(acc, accumulation_dtype(t.dtype))
            dot = torch.zeros((), dtype=acc, device=device)
            for u, s in zip(utility, paired):
                dot += torch.dot(u.reshape(-1).to(acc), s.reshape(-1).to(acc)).to(device)
            sq_safe = global_sq_norm(safety, device).to(acc)
            sq_util = global_sq_norm(utility, device).to(acc)
            dot_v, sq_s, sq_u = torch.stack([dot, sq_safe, sq_util]).tolist()
            if not (math.isfinite(dot_v) and math.isfinite(sq_s)):
                self._skip_nonfinite("gradient", dot_v if not math.isfinite(dot_v) else sq_s)
                return {"safety_loss": value, "conflict": False, "cosine": 0.0}
            conflict = dot_v < 0.0 and sq_s > 0.0
            if conflict:
                coef = dot_v / sq_s
                torch._foreach_sub_(ensure_grads(params), safety, alpha=coef)
                self._num_conflicts += 1
        cosine = dot_v / math.sqrt(sq_s * sq_u) if sq_s > 0 and sq_u > 0 else 0.0
        return {"safety_loss": value, "conflict": conflict, "cosine": cosine}

    def _wrapper_state(self) -> dict:
        return {**super()._wrapper_state(), "num_conflicts": self._num_conflicts}

    def _load_wrapper_state(self, state: dict) -> None:
        super()._load_wrapper_state(state)
        self._num_conflicts = int(state["num_conflicts"])
