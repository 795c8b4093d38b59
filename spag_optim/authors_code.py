r"""AuthorsCodeSPAG: SPAG as the authors' released code implements it.

It differs from the paper's Eq. 3-4 (:class:`~spag_optim.SPAGOptimizer`) in three ways, listed in the
table of the docs' algorithm page: the safety gradient is scaled per parameter tensor by
:math:`\min((\ell - \tau)/(\lVert g_p\rVert + \epsilon), \alpha_{max})` (norm not squared,
:func:`spag_optim.functional.authors_code_scale_`), the *inner optimizer* then steps on the scaled
gradient (a second inner step, with its momentum and adaptive scaling) instead of a direct
:math:`\theta \leftarrow \theta^+ - \alpha g`, and there is no trust region. The loss and the
per-tensor norms are read on the host, as the released Python loop does.

It is a sibling of :class:`~spag_optim.SPAGOptimizer`, not a subclass: each rule's whole step
reads in its own class and the step template of :class:`~spag_optim.SafetyClosureOptimizer`; the
safety gradient and counters both share are :class:`~spag_optim.safety_gradient.SafetyGradient`,
and the constructor, checkpoint hooks and host-side decision are :mod:`spag_optim.spag_rule`'s.
It takes the same arguments and saves the same checkpoint entry (``trust_region``, ``rho`` and
``skip_if_safe`` are kept but unused); :func:`spag_optim.make_spag` builds either rule from
``mode``. A checkpoint of the other rule is refused (an optimizer never changes its class).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import functional as F
from .safety_gradient import host_stats
from .safety_wrapper import SafetyClosureOptimizer
from .spag_rule import host_decision, reducer_for, safety_backward, spag_rule

__all__ = ["AuthorsCodeSPAG"]


@spag_rule("authors_code", sharded=False)
class AuthorsCodeSPAG(SafetyClosureOptimizer):
    r"""SPAG with the authors' released projection rule (``mode="authors_code"``).

    After the inner step, if the safety loss :math:`\ell` exceeds ``tau`` (+ ``tolerance``), each
    parameter tensor's safety gradient :math:`g_p` is scaled by
    :math:`\min((\ell - \tau)/(\lVert g_p\rVert + \epsilon), \alpha_{max})` and the inner
    optimizer steps on it.

    Args:
        inner: the optimizer that takes the utility step and the safety step.
        safety_closure: ``() -> Tensor``, the scalar safety loss with its graph.
        tau: safety threshold; the rule acts when the loss exceeds it.
        trust_region: kept for checkpoints shared with :class:`~spag_optim.SPAGOptimizer`; unused.
        rho: kept likewise; unused.
        mode: ``"authors_code"``, the only rule this class implements.
        tolerance: act only when ``loss > tau + tolerance`` (the authors' scripts use 0.1).
        alpha_max: cap of the per-tensor factor.
        eps: added to the per-tensor norm :math:`\lVert g_p\rVert`.
        skip_if_safe: kept likewise; unused (this rule always reads the loss on the host).
        projection_iterations: must be 1 (the released code has no repeated projection); kept so
            that one configuration builds either rule.
        distributed: as :class:`~spag_optim.SPAGOptimizer`; sharded (FSDP2/DTensor) parameters
            are refused.
        process_group: the group the loss and gradient are averaged over (default: the world).
        grad_scaler: the ``torch.amp.GradScaler`` of an fp16 run (as :class:`~spag_optim.SPAGOptimizer`).

    Example:
        >>> import torch
        >>> from spag_optim import AuthorsCodeSPAG
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = AuthorsCodeSPAG(torch.optim.SGD(model.parameters(), lr=0.1),
        ...                             lambda: model.weight.pow(2).sum(), tau=0.0, tolerance=0.1)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> optimizer.step()
        >>> optimizer.num_projections
        1
    """

    def _extra_repr(self) -> str:
        return (
            f"tau={self.tau}, trust_region={self.trust_region!r}, rho={self.rho}, "
            f"mode={self.mode!r}, tolerance={self.tolerance}, distributed={self.distributed!r}"
        )

    @property
    def num_projections(self) -> int:
        """Steps on which the scaled safety gradient was stepped on."""
        return self._safety_gradient.num_projections

    # -- the rule ---------------------------------------------------------------------------------
    def _after_inner_step(self, params: list[Tensor], prepared: None) -> None:
        safety = self._safety_gradient
        reducer = reducer_for(self, params)
        loss = self._safety_loss()
        loss_value = float(reducer.mean_loss(loss))
        if not host_decision(self, loss_value):
            return
        grads = safety_backward(self, loss, params, reducer)
        with torch.no_grad():
            grad_norm = float(reducer.sq_norm(grads, params[0].device).sqrt())
            if not math.isfinite(grad_norm):
                self._skip_nonfinite("gradient", "not finite", "the projection was skipped")
                self.last_stats = host_stats(loss_value, False, 0.0, grad_norm)
                return
            factors = F.authors_code_scale_(
                grads, loss_value, tau=self.tau, alpha_max=self.alpha_max, eps=self.eps
            )
        self.inner.step()
        projections, _ = safety.counters(params[0].device)
        projections.add_(1)
        self.last_stats = host_stats(loss_value, True, max(factors), grad_norm)
