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
  defense does nothing; see the README's ablation). ``rho=1.0`` (default): the projection never
  moves further than the step that did the damage. In the demo's ablation the uncapped projection
  needed a median 0.53x of AdamW's step, so ``rho=0.5`` let the attack through (ASR 1.00 on three
  seeds) while ``rho=1.0`` and no cap both held it (ASR 0.00) at sft's utility. It keeps one copy
  of the parameters to measure the utility step: the displacement of an arbitrary inner optimizer
  cannot be recovered from its state afterwards.

``mode="authors_code"`` reproduces the authors' released code instead (per-tensor scaling, norm
not squared, the inner optimizer stepping on the scaled safety gradient): see
:func:`spag_optim.functional.authors_code_scale_` and the README.

Distributed training (DDP, FSDP2/DTensor; ``distributed=``) and fp16 loss scaling
(``grad_scaler=``) are described in :mod:`spag_optim.distributed` and in :class:`SPAGOptimizer`;
DeepSpeed ZeRO is rejected at construction (see :func:`spag_optim.distributed.reject_deepspeed`).

Memory and synchronisation: the safety gradient lives in ``p.grad`` (the utility gradient there
was consumed by the inner step), so after ``step()`` the ``.grad`` fields hold the scaled safety
gradient; call ``zero_grad()`` as usual. In paper mode the only host read is the safety loss, used
to skip the safety backward when already safe (``skip_if_safe=True``); with ``skip_if_safe=False``
the whole step stays on device and ``last_stats`` holds 0-dim tensors.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from . import functional as F
from .distributed import Reducer, check_distributed_mode, local_tensors, reject_deepspeed, resolve_distributed
from .hyperparameters import HYPERPARAMETERS, TauCheck, check_hyperparameters, checked_saved, restore
from .safety_wrapper import SafetyClosureOptimizer

__all__ = ["SPAGOptimizer"]

logger = logging.getLogger(__name__)

TrustRegion = Union[float, str, None]
# torch.amp.GradScaler is the device-generic class from torch 2.3; torch.cuda.amp's before that.
_GRAD_SCALER = getattr(torch.amp, "GradScaler", None) or torch.cuda.amp.GradScaler


class SPAGOptimizer(SafetyClosureOptimizer):
    r"""Wrap ``inner`` so that every step ends with SPAG's safety projection.

    Args:
        inner: the optimizer that takes the utility step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the scalar safety loss on a safe mini-batch, evaluated
            at the current parameters and still attached to the graph (SPAG calls backward).
        tau: safety threshold; the projection triggers when the loss exceeds it. Calibrate it
            with :func:`spag_optim.calibrate_tau` (the loss of the aligned model).
        trust_region: ``"relative"``, a float :math:`\eta_{safe}`, ``None`` or ``"lr"`` (above).
        rho: ratio of the ``"relative"`` trust region.
        mode: ``"paper"`` (Eq. 3-4) or ``"authors_code"`` (the released implementation).
        tolerance: trigger only when ``loss > tau + tolerance`` (the authors' scripts use 0.1);
            the step size still uses ``loss - tau``.
        alpha_max: per-tensor cap of ``"authors_code"`` mode.
        eps: added to the denominator (:math:`\lVert g\rVert^2` in paper mode, the per-tensor
            :math:`\lVert g_p\rVert` in authors'-code mode).
        skip_if_safe: read the safety loss once on the host and skip the safety backward when it
            is already below the trigger (paper mode; authors'-code mode always reads it). Under
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
    """

    STATE_KEY = "spag"

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        safety_closure: Callable[[], Tensor],
        *,
        tau: float = 0.2,
        trust_region: TrustRegion = "relative",
        rho: float = 1.0,
        mode: str = "paper",
        tolerance: float = 0.0,
        alpha_max: float = 1.0,
        eps: float = 1e-8,
        skip_if_safe: bool = True,
        distributed: Optional[str] = "auto",
        process_group: Any = None,
        grad_scaler: Optional["torch.amp.GradScaler"] = None,
    ) -> None:
        reject_deepspeed(inner, safety_closure)
        super().__init__(inner, safety_closure)
        hyperparameters = check_hyperparameters(
            tau=tau, trust_region=trust_region, rho=rho, mode=mode, tolerance=tolerance,
            alpha_max=alpha_max, eps=eps, skip_if_safe=skip_if_safe,
        )
        check_distributed_mode(distributed)
        if grad_scaler is not None and not isinstance(grad_scaler, _GRAD_SCALER):
            raise TypeError(
                f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}"
            )
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        self.distributed = distributed
        self.process_group = process_group
        self.grad_scaler = grad_scaler
        # Resolved on the first step (the process group may be initialised after construction)
        # and rebuilt when the parameters change (add_param_group).
        self._reducer: Optional[Reducer] = None
        self._reducer_params: tuple[int, ...] = ()
        # Counted on device so that the sync-free path never reads it back in the hot loop.
        self._projections: Optional[Tensor] = None
        self._nonfinite_grads: Optional[Tensor] = None
        self._warned_nonfinite_grads = 0
        self._snapshot: list[Tensor] = []
        # A step whose safety part failed: the inner step is done, the projection is not. The next
        # step() completes it instead of stepping again (see step()).
        self._pending: Optional[tuple[Optional[Tensor], bool]] = None
        self._step_norm: Optional[Tensor] = None
        self._tau_check = TauCheck()

    def _extra_repr(self) -> str:
        return (
            f"tau={self.tau}, trust_region={self.trust_region!r}, rho={self.rho}, "
            f"mode={self.mode!r}, tolerance={self.tolerance}, distributed={self.distributed!r}"
        )

    def _reducer_for(self, params: list[Tensor]) -> Reducer:
        key = tuple(id(p) for p in params)
        if self._reducer is None or key != self._reducer_params:
            mode = resolve_distributed(self.distributed, params, self.safety_closure, self.process_group)
            if mode == "sharded" and self.mode == "authors_code":
                raise NotImplementedError(
                    "mode='authors_code' takes per-tensor norms on the host and does not support "
                    "sharded (FSDP2/DTensor) parameters; use mode='paper'"
                )
            self._reducer = Reducer(mode, params, self.process_group)
            self._reducer_params = key
        return self._reducer

    # -- counters ---------------------------------------------------------------------------------
    @property
    def num_projections(self) -> int:
        """Steps whose safety projection moved the parameters (alpha > 0)."""
        return 0 if self._projections is None else int(self._projections)

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety loss or gradient was NaN/inf; the parameters stayed at theta+."""
        grads = 0 if self._nonfinite_grads is None else int(self._nonfinite_grads)
        return self._num_nonfinite + grads

    def _warn_nonfinite_grads(self, seen: int) -> None:
        if seen > self._warned_nonfinite_grads:
            warnings.warn(
                f"SPAG: {seen - self._warned_nonfinite_grads} earlier step(s) had a non-finite "
                "safety gradient; their projection was skipped (parameters kept theta+)",
                RuntimeWarning,
                stacklevel=4,
            )
            self._warned_nonfinite_grads = seen

    def _counters(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._projections is None:
            self._projections = torch.zeros((), dtype=torch.int64, device=device)
            self._nonfinite_grads = torch.zeros((), dtype=torch.int64, device=device)
        assert self._nonfinite_grads is not None
        return self._projections, self._nonfinite_grads

    # -- step -------------------------------------------------------------------------------------
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:  # type: ignore[override]
        """Inner step on the utility gradient, then the safety projection.

        ``closure`` is the usual torch utility closure (re-evaluates the utility loss and calls
        backward); the safety loss comes from ``safety_closure`` given at construction.

        Retry-safe: if the safety part fails (the closure raises, e.g. out of memory, or returns
        something that is not a scalar loss with a graph), the inner step has already been taken;
        the closure's position is restored and the next ``step()`` call only completes the
        projection (``closure`` and ``p.grad`` are then not used), so a retried step equals one
        whose closure never failed. Sparse gradients are refused before anything moves.
        """
        if self._pending is None:
            utility_loss = None
            if closure is not None:
                with torch.enable_grad():
                    utility_loss = closure()
            params = self.params()
            self._check_grads(params)
            relative = self.mode == "paper" and self.trust_region == "relative" and bool(params)
            if relative:
                self._take_snapshot(local_tensors(params))
            self.inner.step()
            self._num_steps += 1
            self._pending, self._step_norm = (utility_loss, relative), None
        else:
            logger.info("SPAG: completing the step whose safety part failed (projection only)")
        utility_loss, relative = self._pending
        params = self.params()
        if not params:
            self.last_stats = _stats(float("nan"), False, 0.0, 0.0)
            self._warn_frozen_once()
        else:
            with self._closure_rollback():
                if self.mode == "paper":
                    self._paper_projection(params, relative)
                else:
                    self._authors_code_projection(params)
        self._pending = None
        return utility_loss

    def _take_snapshot(self, params: list[Tensor]) -> None:
        if len(self._snapshot) != len(params) or any(
            s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
            for s, p in zip(self._snapshot, params)
        ):
            self._snapshot = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        with torch.no_grad():
            torch._foreach_copy_(self._snapshot, params)

    def _nonfinite_loss(self, loss_value: float) -> None:
        self._num_nonfinite += 1
        warnings.warn(
            f"SPAG: the safety loss is {loss_value}; this step's projection was skipped and the "
            "parameters kept the inner optimizer's update",
            RuntimeWarning,
            stacklevel=3,
        )

    def _backward(self, loss: Tensor, params: list[Tensor], reducer: Reducer) -> list[Tensor]:
        """Safety gradient into ``p.grad`` (reusing the consumed utility buffers).

        Returns the local gradient tensors, averaged over ranks and unscaled: the global
        gradient of the rank-averaged loss, laid out like the parameters.
        """
        with torch.no_grad():
            existing = local_tensors([p.grad for p in params if p.grad is not None])
            if existing:
                torch._foreach_zero_(existing)
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            loss = self.grad_scaler.scale(loss)
        if reducer.mode == "sharded":
            # FSDP2 computes gradients of the unsharded parameters and reduce-scatters them into
            # the sharded ones in its own backward hooks; restricting backward to the sharded
            # parameters (inputs=) would bypass them. Parameters outside this optimizer that
            # require grad therefore also receive the safety gradient here.
            torch.autograd.backward(loss)
        else:
            torch.autograd.backward(loss, inputs=params)
        with torch.no_grad():
            for p in params:
                if p.grad is None:  # not reached by the safety loss: a zero component of g
                    p.grad = torch.zeros_like(p)
            grads = local_tensors([p.grad for p in params])  # type: ignore[misc]
            reducer.average_grads_(grads)
            self._unscale_(grads)
        return grads

    def _unscale_(self, grads: list[Tensor]) -> None:
        """Undo ``grad_scaler``'s scale, as ``GradScaler.unscale_`` does, and report overflow.

        Uses GradScaler's own kernel and device-side scale (no host read). An inf/NaN is added to
        the ``found_inf`` that ``scaler.step(self)`` recorded for this optimizer, so the scaler's
        next ``update()`` backs off exactly as for an overflowing utility gradient; the
        projection itself is skipped because the squared norm is then not finite.
        """
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled() or not grads:
            return
        scale = scaler._scale  # set by the scaler.scale() call in _backward
        assert scale is not None
        inv_scale = scale.double().reciprocal().float()
        found_inf = torch.zeros(1, dtype=torch.float32, device=scale.device)
        for (device, _), ([group], _) in _group_tensors_by_device_and_dtype([grads]).items():
            found = torch.zeros(1, dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, inv_scale.to(device))
            found_inf.add_(found.to(found_inf.device))
        state = scaler._per_optimizer_states.get(id(self))
        recorded = (state or {}).get("found_inf_per_device") or {}
        if recorded:
            target = next(iter(recorded.values()))
            target.add_(found_inf.to(target.device).reshape(target.shape))

    def _paper_projection(self, params: list[Tensor], relative: bool) -> None:
        device = params[0].device
        reducer = self._reducer_for(params)
        local_loss = self._safety_loss()
        loss = reducer.mean_loss(local_loss)  # what alpha (and every rank's decision) uses
        projections, nonfinite = self._counters(device)
        if self.skip_if_safe:
            # The one allowed host-device synchronisation; it also brings back the device-side
            # count of earlier non-finite gradients so that they are warned about.
            loss_value, seen = torch.stack(
                [loss.to(torch.float64), nonfinite.to(loss.device, torch.float64)]
            ).tolist()
            self._warn_nonfinite_grads(int(seen))
            if not math.isfinite(loss_value):
                self._nonfinite_loss(loss_value)
                self.last_stats = _stats(loss_value, False, 0.0, float("nan"))
                return
            triggered = loss_value - self.tau > self.tolerance
            self._tau_check.observe(self._num_steps, loss_value, self.tau, triggered)
            if not triggered:
                self.last_stats = _stats(loss_value, False, 0.0, 0.0)
                return
        grads = self._backward(local_loss, params, reducer)
        with torch.no_grad():
            local_params = local_tensors(params)
            sq_norm = reducer.sq_norm(grads, device)
            cap = self._cap(local_params, sq_norm, relative, reducer)
            alpha, finite = F.projection_alpha(
                loss, sq_norm, tau=self.tau, tolerance=self.tolerance, eps=self.eps, cap=cap
            )
            F.apply_projection_(local_params, grads, alpha)
            projected = alpha > 0
            projections.add_(projected.to(torch.int64))
            nonfinite.add_((~finite).to(torch.int64))
        self.last_stats = {
            "safety_loss": loss,
            "projected": projected,
            "alpha": alpha,
            "safety_grad_norm": sq_norm.sqrt(),
        }

    def _cap(
        self, params: list[Tensor], sq_norm: Tensor, relative: bool, reducer: Reducer
    ) -> float | Tensor | None:
        if relative and self._step_norm is None:  # kept if the step is retried after a failure
            # The snapshot becomes theta - theta+; its norm is the utility step's length.
            torch._foreach_sub_(self._snapshot, params)
            self._step_norm = reducer.sq_norm(self._snapshot, sq_norm.device).sqrt()
        return F.trust_region_cap(
            "relative" if relative else self.trust_region, sq_norm, rho=self.rho,
            step_norm=self._step_norm, lr=self.param_groups[0]["lr"],
        )

    def _authors_code_projection(self, params: list[Tensor]) -> None:
        reducer = self._reducer_for(params)
        loss = self._safety_loss()
        loss_value = float(reducer.mean_loss(loss))
        if not math.isfinite(loss_value):
            self._nonfinite_loss(loss_value)
            self.last_stats = _stats(loss_value, False, 0.0, float("nan"))
            return
        triggered = loss_value - self.tau > self.tolerance
        self._tau_check.observe(self._num_steps, loss_value, self.tau, triggered)
        if not triggered:
            self.last_stats = _stats(loss_value, False, 0.0, 0.0)
            return
        grads = self._backward(loss, params, reducer)
        with torch.no_grad():
            grad_norm = float(reducer.sq_norm(grads, params[0].device).sqrt())
            if not math.isfinite(grad_norm):
                self._num_nonfinite += 1
                warnings.warn(
                    "SPAG: the safety gradient is not finite; the projection was skipped",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.last_stats = _stats(loss_value, False, 0.0, grad_norm)
                return
            factors = F.authors_code_scale_(
                grads, loss_value, tau=self.tau, alpha_max=self.alpha_max, eps=self.eps
            )
        self.inner.step()
        projections, _ = self._counters(params[0].device)
        projections.add_(1)
        self.last_stats = _stats(loss_value, True, max(factors), grad_norm)

    # -- state dict -------------------------------------------------------------------------------
    STATE_FIELDS = SafetyClosureOptimizer.STATE_FIELDS + ("num_projections",)

    def _hyperparameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def _wrapper_state(self) -> dict[str, Any]:
        return {**super()._wrapper_state(), "num_projections": self.num_projections,
                "hyperparameters": self._hyperparameters()}

    def _check_wrapper_state(self, state: Any) -> None:
        super()._check_wrapper_state(state)
        if "hyperparameters" in state:  # absent from checkpoints of earlier versions
            checked_saved(self._hyperparameters(), state["hyperparameters"])

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        super()._load_wrapper_state(state)
        if "hyperparameters" in state:
            for name, value in restore(self._hyperparameters(), state["hyperparameters"]).items():
                setattr(self, name, value)
        self._pending, self._warned_nonfinite_grads, self._reducer = None, 0, None
        device = self.params()[0].device if self.params() else torch.device("cpu")
        self._projections = torch.tensor(int(state["num_projections"]), device=device)
        self._nonfinite_grads = torch.zeros((), dtype=torch.int64, device=device)


def _stats(loss: float, projected: bool, alpha: float, grad_norm: float) -> dict[str, Any]:
    return {"safety_loss": loss, "projected": projected, "alpha": alpha, "safety_grad_norm": grad_norm}

