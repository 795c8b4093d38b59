r"""Penalty: the soft-constraint alternative to SPAG's projection.

Instead of constraining :math:`L_{safe}(\theta) \le \tau`, add a hinge penalty to the objective
and let the inner optimizer minimise

.. math::
    L_{fit}(\theta) + \lambda \max(L_{safe}(\theta) - \tau, 0).

The SPARD paper argues against this form: the penalty's weight trades safety for utility at
every step and has to be tuned per task, whereas the projection acts only when the constraint is
violated and by exactly as much as needed. It is here so that claim can be checked.

On each :meth:`~spag_optim.safety_wrapper.SafetyClosureOptimizer.step`, with the utility
gradient :math:`g_{fit}` already in ``p.grad`` and :math:`\ell = L_{safe}(\theta)` from the safety
closure at the same parameters:
``p.grad`` becomes :math:`g_{fit} + \lambda \nabla L_{safe}(\theta)` when :math:`\ell > \tau`
(the hinge's gradient; 0 at or below :math:`\tau`), then the inner optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..functional import global_sq_norm
from ..safety_wrapper import SafetyClosureOptimizer, check_number, ensure_grads

__all__ = ["PenaltyOptimizer"]


class PenaltyOptimizer(SafetyClosureOptimizer):
    r"""Minimise :math:`L_{fit} + \lambda \max(L_{safe} - \tau, 0)` with any torch optimizer.

    Args:
        inner: the optimizer that takes the step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the scalar safety loss with its graph, evaluated at
            the current parameters (the same point as the utility gradient).
        lam: penalty weight :math:`\lambda` (> 0).
        tau: hinge threshold :math:`\tau` (>= 0); 0 makes it a plain weighted sum.
    """

    STATE_KEY = "penalty"
    STATE_FIELDS = SafetyClosureOptimizer.STATE_FIELDS + ("num_active",)
    INTERVENTIONS = "num_active"
    COUNTERS = ("num_active",)

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        safety_closure: Callable[[], Tensor],
        *,
        lam: float = 1.0,
        tau: float = 0.0,
    ) -> None:
        super().__init__(inner, safety_closure)
        self.lam = check_number("lam", lam, minimum=0.0, strict=True)
        self.tau = check_number("tau", tau, minimum=0.0)
        self._num_active = 0

    def _extra_repr(self) -> str:
        return f"lam={self.lam}, tau={self.tau}"

    @property
    def num_active(self) -> int:
        """Steps on which the hinge was active (safety loss above tau)."""
        return self._num_active

    def _before_inner_step(self, params: list[Tensor]) -> None:
        loss = self._safety_loss()
        value = float(loss.detach())
        active = value > self.tau
        grad_norm = 0.0
        if not math.isfinite(value):
            self._skip_nonfinite("loss", value)
            active = False
        elif active:
            safety = self._safety_grads(loss, params)
            grad_norm = float(global_sq_norm(safety, params[0].device).sqrt())
            if not math.isfinite(grad_norm):
                self._skip_nonfinite("gradient norm", grad_norm)
                active = False
            else:
                with torch.no_grad():
                    torch._foreach_add_(ensure_grads(params), safety, alpha=self.lam)
        self._num_active += int(active)
        self.last_stats = {
            "safety_loss": value,
            "penalty_active": active,
            "penalty": self.lam * max(value - self.tau, 0.0) if math.isfinite(value) else 0.0,
            "safety_grad_norm": grad_norm,
        }

    def _wrapper_state(self) -> dict:
        return {**super()._wrapper_state(), "num_active": self._num_active}

    def _load_wrapper_state(self, state: dict) -> None:
        super()._load_wrapper_state(state)
        self._num_active = int(state["num_active"])
