r"""AuthorsCodeSPAG: SPAG as the authors' released code implements it.

It differs from the paper's Eq. 3-4 (:class:`~spag_optim.SPAGOptimizer`) in three ways, listed in the
README's table: the safety gradient is scaled per parameter tensor by
:math:`\min((\ell - \tau)/(\lVert g_p\rVert + \epsilon), \alpha_{max})` (norm not squared,
:func:`spag_optim.functional.authors_code_scale_`), the *inner optimizer* then steps on the scaled
gradient (a second inner step, with its momentum and adaptive scaling) instead of a direct
:math:`\theta \leftarrow \theta^+ - \alpha g`, and there is no trust region. The loss and the
per-tensor norms are read on the host, as the released Python loop does.

``SPAGOptimizer(inner, closure, mode="authors_code")`` constructs this class; it takes the same
arguments and saves the same checkpoint entry (``trust_region``, ``rho`` and ``skip_if_safe`` are
kept but unused).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from . import functional as F
from .optimizer import SPAGOptimizer
from .spag_base import _stats

__all__ = ["AuthorsCodeSPAG"]


class AuthorsCodeSPAG(SPAGOptimizer):
    """SPAG with the authors' released projection rule (``mode="authors_code"``).

    Args: as :class:`~spag_optim.SPAGOptimizer`; ``alpha_max`` caps the per-tensor factor and
    ``eps`` is added to the per-tensor norm. Sharded (FSDP2/DTensor) parameters are refused.
    """

    SUPPORTS_SHARDED = False

    def __init__(self, inner: torch.optim.Optimizer, safety_closure: Callable[[], Tensor], *,
                 mode: str = "authors_code", **kwargs: Any) -> None:
        if mode != "authors_code":
            raise ValueError(f"AuthorsCodeSPAG implements mode='authors_code', got mode={mode!r}; "
                             "use SPAGOptimizer for the paper's projection")
        super().__init__(inner, safety_closure, mode=mode, **kwargs)

    def _before_inner_step(self, params: list[Tensor]) -> None:
        return None  # no trust region: nothing to keep

    def _after_inner_step(self, params: list[Tensor], prepared: None) -> None:
        reducer = self._reducer_for(params)
        loss = self._safety_loss()
        loss_value = float(reducer.mean_loss(loss))
        if not self._triggered(loss_value):
            return
        grads = self._backward(loss, params, reducer)
        with torch.no_grad():
            grad_norm = float(reducer.sq_norm(grads, params[0].device).sqrt())
            if not math.isfinite(grad_norm):
                self._skip_nonfinite("gradient", "not finite", "the projection was skipped")
                self.last_stats = _stats(loss_value, False, 0.0, grad_norm)
                return
            factors = F.authors_code_scale_(
                grads, loss_value, tau=self.tau, alpha_max=self.alpha_max, eps=self.eps
            )
        self.inner.step()
        projections, _ = self._counters(params[0].device)
        projections.add_(1)
        self.last_stats = _stats(loss_value, True, max(factors), grad_norm)
