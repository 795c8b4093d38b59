r"""SPAGOptimizer: safety projection after every step of any torch optimizer.

Algorithm (SPARD, ICML 2026, Algorithm 1; Eq. 3-4), on each :meth:`SPAGOptimizer.step`:

1. the inner optimizer takes its normal step on the utility gradient the caller computed:
   :math:`\theta^+`;
2. ``safety_closure()`` returns the safety loss :math:`\ell` on a batch of safe data (harmful
   prompt + refusal) at :math:`\theta^+`, with its graph;
3. if :math:`\ell \le \tau` (+ ``tolerance``) keep :math:`\theta^+`;
4. otherwise, with :math:`g = \nabla_\theta \ell` over every parameter of every group (one
   global vector), :math:`\alpha = \min((\ell - \tau)/\lVert g\rVert^2, \eta_{safe})` and
   :math:`\theta \leftarrow \theta^+ - \alpha g`: the projection onto the linearised safe
   half-space, limited to a trust region.

The trust region :math:`\eta_{safe}` (``trust_region``):

* a float: :math:`\eta_{safe}` itself;
* ``None``: no cap (the paper's Table 7 ablation "w/o eta_safe");
* ``"lr"``: the inner optimizer's current learning rate (first param group), the paper's
  experimental setting; it follows any LR scheduler;
* ``"relative"`` (default): the projection may move the parameters at most ``rho`` times as far as
  the utility step just did, :math:`\alpha\lVert g\rVert \le \rho\lVert\theta^+ - \theta\rVert`.
  Scale-aware, so it works with Adam-family optimizers whose step size has nothing to do with the
  gradient's scale (with ``"lr"`` the projection is 10-100x smaller than Adam's step and the
  defense does nothing; see the demo's trust-region ablation in the docs). ``rho=1.0``
  (default): the projection never moves further than the step that did the damage. In the
  demo's ablation (20 seeds, two numeric environments) the uncapped projection needed a median
  0.53x of AdamW's step, so ``rho=0.5`` let most attacks through (mean ASR 0.71-1.00) while
  ``rho=1.0`` could not be told from no cap. It keeps one copy
  of the parameters to measure the utility step: the displacement of an arbitrary inner optimizer
  cannot be recovered from its state afterwards.

The authors' released code takes another projection (per-tensor scaling, norm not squared, the
inner optimizer stepping on the scaled safety gradient): it is the sibling class
:class:`spag_optim.AuthorsCodeSPAG`, and :func:`spag_optim.make_spag` builds either from ``mode``.
The trust region is :func:`spag_optim.functional.trust_region_cap`; the rank-averaged safety
gradient and the counters both rules share are :class:`spag_optim.safety_gradient.SafetyGradient`;
the step template (retry-safe) is :class:`spag_optim.SafetyClosureOptimizer`.

``projection_iterations=K`` repeats the projection on the same safe batch until the loss is at
most tau (at most K times per step); the default 1 is the paper's rule (see
:func:`spag_optim.functional.repeated_projection_stops`).

Distributed training (DDP, FSDP2/DTensor; ``distributed=``) and fp16 loss scaling
(``grad_scaler=``) are described in :mod:`spag_optim.distributed` and in :class:`SPAGOptimizer`;
DeepSpeed ZeRO is rejected at construction (see :func:`spag_optim.distributed.reject_deepspeed`).

Memory and synchronisation: the safety gradient lives in ``p.grad`` (the utility gradient there
was consumed by the inner step), so after ``step()`` the ``.grad`` fields hold the scaled safety
gradient; call ``zero_grad()`` as usual. In paper mode the only host read is the safety loss, used
to skip the safety backward when already safe (``skip_if_safe=True``); with ``skip_if_safe=False``
the whole step stays on device. ``last_stats`` always holds 0-dim tensors (``safety_loss``,
``projected``, ``alpha``, ``safety_grad_norm``); ``stats()`` reads them back as Python floats with
the counters, when the caller logs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import functional as F
from .distributed import Reducer, local_tensors
from .safety_wrapper import SafetyClosureOptimizer
from .spag_rule import host_decision, reducer_for, safety_backward, spag_rule

__all__ = ["SPAGOptimizer"]


def _paper_state(optimizer: SPAGOptimizer) -> None:
    """The paper rule's own state: the copy of theta that measures the utility step."""
    optimizer._snapshot = []
    optimizer._step_norm = None


@spag_rule("paper", sharded=True, setup=_paper_state)
class SPAGOptimizer(SafetyClosureOptimizer):
    r"""Wrap ``inner`` so that every step ends with SPAG's safety projection (SPARD, Eq. 3-4).

    After the inner optimizer's step to :math:`\theta^+`, if the safety loss :math:`\ell` exceeds
    ``tau`` (+ ``tolerance``), the parameters move to
    :math:`\theta^+ - \alpha g` with :math:`g = \nabla\ell(\theta^+)` and
    :math:`\alpha = \min((\ell - \tau)/\lVert g\rVert^2, \eta_{safe})`: the projection onto the
    linearised safe half-space, within the trust region.

    Args:
        inner: the optimizer that takes the utility step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the scalar safety loss on a safe mini-batch, evaluated
            at the current parameters and still attached to the graph (SPAG calls backward).
        tau: safety threshold; the projection triggers when the loss exceeds it. Calibrate it
            with :func:`spag_optim.calibrate_tau` (the loss of the aligned model).
        trust_region: ``"relative"``, a float :math:`\eta_{safe}`, ``None`` or ``"lr"`` (see
            :mod:`spag_optim.optimizer`).
        rho: ratio of the ``"relative"`` trust region.
        mode: ``"paper"``, the only rule this class implements (kept so that a configuration
            naming it still works). For the authors' released rule construct
            :class:`~spag_optim.AuthorsCodeSPAG`, or :func:`~spag_optim.make_spag` with
            ``mode="authors_code"``; passing that mode here is an error that says so.
        tolerance: trigger only when ``loss > tau + tolerance`` (the authors' scripts use 0.1);
            the step size still uses ``loss - tau``.
        alpha_max: unused by this rule (the authors' per-tensor cap); saved with the checkpoint.
        eps: added to the denominator :math:`\lVert g\rVert^2`.
        projection_iterations: ``1`` (default) is the paper's single projection; ``K > 1``
            repeats it on the same safe batch, with the step's trust region, until the loss is at
            most ``tau + tolerance`` or K projections were made (cost, retries and measurements:
            the docs' algorithm page). ``mode="paper"`` only.
        skip_if_safe: read the safety loss once on the host and skip the safety backward when it
            is already below the trigger; ``False`` keeps the whole step on device. Under
            ``distributed`` the read is of the loss averaged over ranks, so all ranks agree.
        distributed: how the ranks share the projection: ``"auto"`` (default), ``"ddp"`` (the
            closure runs the ``DistributedDataParallel``-wrapped model), ``"allreduce"`` (the
            closure runs the bare module; SPAG averages the gradient), ``"sharded"``
            (FSDP2/DTensor parameters) or ``None``; see :mod:`spag_optim.distributed`.
        process_group: the group the loss and gradient are averaged over (default: the world).
        grad_scaler: the ``torch.amp.GradScaler`` of an fp16 run. The safety backward is then
            scaled by it and the gradient unscaled before use, as the utility backward is; an
            inf/NaN there skips the projection and makes the scaler back off at its next
            ``update()``. (A step whose *utility* gradient overflows is skipped by
            ``scaler.step(optimizer)`` itself, projection included.)

    Example:
        >>> import torch
        >>> from spag_optim import SPAGOptimizer
        >>> model = torch.nn.Linear(4, 2)
        >>> x, y, x_safe = torch.randn(8, 4), torch.randn(8, 2), torch.randn(8, 4)
        >>> optimizer = SPAGOptimizer(
        ...     torch.optim.AdamW(model.parameters(), lr=1e-3),
        ...     lambda: model(x_safe).pow(2).mean(),  # the safety loss, with its graph
        ...     tau=0.1,
        ... )
        >>> optimizer.zero_grad()
        >>> torch.nn.functional.mse_loss(model(x), y).backward()
        >>> optimizer.step()  # AdamW's step, then the projection if the safety loss > tau
        >>> optimizer.stats()["num_steps"]
        1.0

        With real data, build the closure with :func:`spag_optim.make_safety_closure` over
        :class:`spag_optim.SafetyBatches`; its position is then saved in ``state_dict()``.
    """

    def _extra_repr(self) -> str:
        return (
            f"tau={self.tau}, trust_region={self.trust_region!r}, rho={self.rho}, "
            f"mode={self.mode!r}, tolerance={self.tolerance}, "
            f"projection_iterations={self.projection_iterations}, distributed={self.distributed!r}"
        )

    @property
    def num_projections(self) -> int:
        """Steps whose safety projection moved the parameters (alpha > 0)."""
        return self._safety_gradient.num_projections

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety loss or gradient was NaN/inf; the parameters stayed at theta+."""
        return self._num_nonfinite + self._safety_gradient.num_nonfinite

    # -- the rule ---------------------------------------------------------------------------------
    def _before_inner_step(self, params: list[Tensor]) -> bool:
        """Whether the trust region is relative; if so, keep theta to measure the utility step."""
        self._step_norm = None
        relative = self.trust_region == "relative"
        if relative:
            self._take_snapshot(local_tensors(params))
        return relative

    def _take_snapshot(self, params: list[Tensor]) -> None:
        if len(self._snapshot) != len(params) or any(
            s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
            for s, p in zip(self._snapshot, params)
        ):
            self._snapshot = [
                torch.empty_like(p, memory_format=torch.preserve_format) for p in params
            ]
        with torch.no_grad():
            torch._foreach_copy_(self._snapshot, params)

    def _after_inner_step(self, params: list[Tensor], relative: bool) -> None:
        device, safety = params[0].device, self._safety_gradient
        reducer = reducer_for(self, params)
        batch_position = self._closure_position()  # where a repeated projection rewinds to
        local_loss = self._safety_loss()
        loss = reducer.mean_loss(local_loss)  # what alpha (and every rank's decision) uses
        projections, nonfinite = safety.counters(device)
        if self.skip_if_safe:
            # The one allowed host-device synchronisation; it also brings back the device-side
            # count of earlier non-finite gradients so that they are warned about.
            loss_value, seen = torch.stack(
                [loss.to(torch.float64), nonfinite.to(loss.device, torch.float64)]
            ).tolist()
            safety.warn_nonfinite(int(seen))
            if not host_decision(self, loss_value):
                return
        repeated = self.projection_iterations > 1
        theta_plus = [p.detach().clone() for p in local_tensors(params)] if repeated else []
        try:
            alpha, finite, sq_norm = self._project(local_loss, loss, params, relative, reducer)
            if theta_plus:
                self._repeat_projection(params, relative, reducer, batch_position)
        except BaseException:
            if theta_plus:  # a retry starts again from theta+, as if nothing had failed
                with torch.no_grad():
                    torch._foreach_copy_(local_tensors(params), theta_plus)
            raise
        with torch.no_grad():
            projected = alpha > 0
            projections.add_(projected.to(torch.int64))
            nonfinite.add_((~finite).to(torch.int64))
        self.last_stats = {
            "safety_loss": loss,
            "projected": projected,
            "alpha": alpha,
            "safety_grad_norm": sq_norm.sqrt(),
        }

    def _project(
        self,
        local_loss: Tensor,
        loss: Tensor,
        params: list[Tensor],
        relative: bool,
        reducer: Reducer,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One projection of Eq. 4 from the current parameters; returns alpha, finite, ||g||^2."""
        grads = safety_backward(self, local_loss, params, reducer)
        with torch.no_grad():
            local_params = local_tensors(params)
            sq_norm = reducer.sq_norm(grads, params[0].device)
            cap = self._cap(local_params, sq_norm, relative, reducer)
            alpha, finite = F.projection_alpha(
                loss, sq_norm, tau=self.tau, tolerance=self.tolerance, eps=self.eps, cap=cap
            )
            F.apply_projection_(local_params, grads, alpha)
        return alpha, finite, sq_norm

    def _closure_position(self) -> Any:
        """The safety closure's position (None if it has none or the projection is not repeated)."""
        saver = getattr(self.safety_closure, "state_dict", None)
        return saver() if self.projection_iterations > 1 and callable(saver) else None

    def _repeat_projection(
        self, params: list[Tensor], relative: bool, reducer: Reducer, batch_position: Any
    ) -> None:
        """Projections 2..K of the repeated rule (:mod:`spag_optim.functional`) on the same safe
        batch (the closure rewound to ``batch_position``), each with this step's trust region,
        until the loss is at most tau + tolerance."""
        for _ in range(self.projection_iterations - 1):
            if batch_position is not None:
                self.safety_closure.load_state_dict(batch_position)  # type: ignore[attr-defined]
            local_loss = self._safety_loss()
            loss = reducer.mean_loss(local_loss)
            if F.repeated_projection_stops(float(loss), tau=self.tau, tolerance=self.tolerance):
                return
            alpha, _, _ = self._project(local_loss, loss, params, relative, reducer)
            if not bool(alpha > 0):
                return

    def _cap(
        self, params: list[Tensor], sq_norm: Tensor, relative: bool, reducer: Reducer
    ) -> float | Tensor | None:
        if relative and self._step_norm is None:  # kept if the step is retried after a failure
            # The snapshot becomes theta - theta+; its norm is the utility step's length.
            torch._foreach_sub_(self._snapshot, params)
            self._step_norm = reducer.sq_norm(self._snapshot, sq_norm.device).sqrt()
        return F.trust_region_cap(
            "relative" if relative else self.trust_region,
            sq_norm,
            rho=self.rho,
            step_norm=self._step_norm,
            lr=self.param_groups[0]["lr"],
        )
