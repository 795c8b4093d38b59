r"""What both SPAG projections share: the trigger, the safety gradient, counters, state.

:class:`SPAGBase` takes the step of every defense
(:class:`~spag_optim.safety_wrapper.SafetyClosureOptimizer`: utility closure, inner step, then the
projection, retry-safe) and adds what a projection after the inner step needs: the trigger on the
rank-averaged loss, the safety backward (zero-filled for parameters the loss does not reach,
averaged over ranks, unscaled from fp16 loss scaling), the device-side counters and the ``"spag"``
checkpoint entry. The two projection rules are its subclasses:
:class:`~spag_optim.SPAGOptimizer` (SPARD, Algorithm 1 and Eq. 3-4) and
:class:`~spag_optim.authors_code.AuthorsCodeSPAG` (the authors' released code); each implements
``_after_inner_step`` (the projection) and, if it needs one, ``_before_inner_step``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ._caller_warning import warn_at_caller
from ._torch_compat import amp_unscale_, grad_scaler_found_inf, grad_scaler_scale, group_by_device_and_dtype
from .distributed import Reducer, check_distributed_mode, local_tensors, reject_deepspeed, resolve_distributed
from .hyperparameters import HYPERPARAMETERS, TauCheck, check_hyperparameters, checked_saved, restore
from .safety_wrapper import SafetyClosureOptimizer

__all__ = ["SPAGBase"]

TrustRegion = Union[float, str, None]
# torch.amp.GradScaler is the device-generic class from torch 2.3; torch.cuda.amp's before that.
_GRAD_SCALER = getattr(torch.amp, "GradScaler", None) or torch.cuda.amp.GradScaler


class SPAGBase(SafetyClosureOptimizer):
    """The inner step, then :meth:`_project`; see :class:`~spag_optim.SPAGOptimizer` for the
    arguments (both projection rules take the same ones, so checkpoints are interchangeable)."""

    STATE_KEY = "spag"
    WARN_NAME = "SPAG"
    INTERVENTIONS = "num_projections"
    COUNTERS = ("num_projections",)
    #: Whether the projection handles sharded (FSDP2/DTensor) parameters.
    SUPPORTS_SHARDED = True

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
        projection_iterations: int = 1,
        distributed: Optional[str] = "auto",
        process_group: Any = None,
        grad_scaler: Optional["torch.amp.GradScaler"] = None,
    ) -> None:
        reject_deepspeed(inner, safety_closure)
        super().__init__(inner, safety_closure)
        hyperparameters = check_hyperparameters(
            tau=tau, trust_region=trust_region, rho=rho, mode=mode, tolerance=tolerance,
            alpha_max=alpha_max, eps=eps, skip_if_safe=skip_if_safe,
            projection_iterations=projection_iterations,
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
        self._step_norm: Optional[Tensor] = None
        self._tau_check = TauCheck()

    def _reducer_for(self, params: list[Tensor]) -> Reducer:
        key = tuple(id(p) for p in params)
        if self._reducer is None or key != self._reducer_params:
            mode = resolve_distributed(self.distributed, params, self.safety_closure, self.process_group)
            if mode == "sharded" and not self.SUPPORTS_SHARDED:
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
            warn_at_caller(
                f"SPAG: {seen - self._warned_nonfinite_grads} earlier step(s) had a non-finite "
                "safety gradient; their projection was skipped (parameters kept theta+)",
                RuntimeWarning,
            )
            self._warned_nonfinite_grads = seen

    def _counters(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._projections is None:
            self._projections = torch.zeros((), dtype=torch.int64, device=device)
            self._nonfinite_grads = torch.zeros((), dtype=torch.int64, device=device)
        assert self._nonfinite_grads is not None
        return self._projections, self._nonfinite_grads

    # -- the rule's shared parts ------------------------------------------------------------------
    def _frozen_stats(self) -> dict[str, Any]:
        return _stats(float("nan"), False, 0.0, 0.0)

    def _triggered(self, loss_value: float) -> bool:
        """The host-side decision on the (rank-averaged) safety loss: project only when it is
        finite and above ``tau + tolerance``; otherwise ``last_stats`` says why not."""
        if not math.isfinite(loss_value):
            self._skip_nonfinite("loss", loss_value, "this step's projection was skipped and the "
                                 "parameters kept the inner optimizer's update")
            self.last_stats = _stats(loss_value, False, 0.0, float("nan"))
            return False
        triggered = loss_value - self.tau > self.tolerance
        self._tau_check.observe(self._num_steps, loss_value, self.tau, triggered)
        if not triggered:
            self.last_stats = _stats(loss_value, False, 0.0, 0.0)
        return triggered

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
            grads = local_tensors(self._ensure_grads(params))  # unreached: zero component of g
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
        scale = grad_scaler_scale(scaler)  # set by the scaler.scale() call in _backward
        inv_scale = scale.double().reciprocal().float()
        found_inf = torch.zeros(1, dtype=torch.float32, device=scale.device)
        for (device, _), ([group], _) in group_by_device_and_dtype([grads]).items():
            found = torch.zeros(1, dtype=torch.float32, device=device)
            amp_unscale_(group, found, inv_scale.to(device))
            found_inf.add_(found.to(found_inf.device))
        target = grad_scaler_found_inf(scaler, self)
        if target is not None:
            target.add_(found_inf.to(target.device).reshape(target.shape))

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
        self._warned_nonfinite_grads, self._reducer = 0, None
        device = self.params()[0].device if self.params() else torch.device("cpu")
        self._projections = torch.tensor(int(state["num_projections"]), device=device)
        self._nonfinite_grads = torch.zeros((), dtype=torch.int64, device=device)


def _stats(loss: float, projected: bool, alpha: float, grad_norm: float) -> dict[str, Tensor]:
    """``last_stats`` of a step decided on the host, as the 0-dim tensors of the device path."""
    values = {"safety_loss": loss, "alpha": alpha, "safety_grad_norm": grad_norm}
    return {**{k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()},
            "projected": torch.tensor(projected)}
