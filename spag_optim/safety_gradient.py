r"""The safety gradient both SPAG rules project with, and what is counted about it.

After the inner step (SPARD, Algorithm 1), :class:`~spag_optim.SPAGOptimizer` (Eq. 3-4) and
:class:`~spag_optim.AuthorsCodeSPAG` (the authors' released code) take the same first half of
their projection and differ only in what they do with :math:`g`:

1. the safety loss :math:`\ell(\theta^+)`, averaged over ranks, decides whether to project
   (:meth:`SafetyGradient.triggered`: above ``tau + tolerance``; it also feeds
   :class:`~spag_optim.hyperparameters.TauCheck`);
2. :math:`g = \nabla_\theta \ell(\theta^+)` (:meth:`SafetyGradient.backward`): zero-filled for
   parameters the loss does not reach, averaged over ranks, unscaled from fp16 loss scaling; the
   first time, when host reads are allowed, a zero :math:`g` is warned about
   (:func:`warn_if_zero_safety_gradient`);
3. device-side counts of projections and of non-finite gradients, read back only when the
   caller asks (:attr:`SafetyGradient.num_projections`), saved in the ``"spag"`` checkpoint entry.

Each rule holds one :class:`SafetyGradient` (composition, as torch's ``PostLocalSGDOptimizer``
holds its averager), so its whole step reads in two classes: the step template of
:class:`~spag_optim.SafetyClosureOptimizer` and the rule itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._caller_warning import warn_at_caller
from ._torch_compat import (
    amp_unscale_,
    grad_scaler_found_inf,
    grad_scaler_scale,
    group_by_device_and_dtype,
)
from .distributed import Reducer, local_tensors, resolve_distributed
from .hyperparameters import TauCheck
from .safety_wrapper import ensure_grads
from .warnings import NonFiniteWarning, ZeroSafetyGradientWarning

__all__ = [
    "GRAD_SCALER",
    "SafetyGradient",
    "check_grad_scaler",
    "host_stats",
    "warn_if_zero_safety_gradient",
]

# torch.amp.GradScaler is the device-generic class from torch 2.3; torch.cuda.amp's before that.
GRAD_SCALER = getattr(torch.amp, "GradScaler", None) or torch.cuda.amp.GradScaler


def check_grad_scaler(grad_scaler: Any) -> None:
    """A clear error unless ``grad_scaler`` is None or a ``torch.amp.GradScaler``."""
    if grad_scaler is not None and not isinstance(grad_scaler, GRAD_SCALER):
        raise TypeError(
            f"grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}"
        )


def host_stats(loss: float, projected: bool, alpha: float, grad_norm: float) -> dict[str, Tensor]:
    """``last_stats`` of a step decided on the host, as the 0-dim tensors of the device path."""
    values = {"safety_loss": loss, "alpha": alpha, "safety_grad_norm": grad_norm}
    return {
        **{k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()},
        "projected": torch.tensor(projected),
    }


class SafetyGradient:
    """The rank reduction, safety backward and device-side counters of one SPAG rule.

    Args:
        rule: the rule's name, for errors (``"paper"`` or ``"authors_code"``).
        sharded: whether the rule handles sharded (FSDP2/DTensor) parameters.
    """

    def __init__(self, rule: str, *, sharded: bool) -> None:
        self.rule = rule
        self.sharded = sharded
        # Resolved on the first step (the process group may be initialised after construction)
        # and rebuilt when the parameters change (add_param_group).
        self.reducer: Reducer | None = None
        self._reducer_params: tuple[int, ...] = ()
        # Counted on device so that the sync-free path never reads them back in the hot loop.
        self.projections: Tensor | None = None
        self.nonfinite: Tensor | None = None
        self._warned_nonfinite = 0
        self.tau_check = TauCheck()
        self._zero_checked = False

    def reducer_for(
        self,
        params: list[Tensor],
        *,
        distributed: str | None,
        safety_closure: Callable[[], Tensor],
        process_group: Any,
    ) -> Reducer:
        """The :class:`~spag_optim.distributed.Reducer` of ``params`` (cached while they stay)."""
        key = tuple(id(p) for p in params)
        if self.reducer is None or key != self._reducer_params:
            mode = resolve_distributed(distributed, params, safety_closure, process_group)
            if mode == "sharded" and not self.sharded:
                raise NotImplementedError(
                    f"mode={self.rule!r} takes per-tensor norms on the host and does not support "
                    "sharded (FSDP2/DTensor) parameters; use SPAGOptimizer (mode='paper')"
                )
            self.reducer = Reducer(mode, params, process_group)
            self._reducer_params = key
        return self.reducer

    # -- counters ---------------------------------------------------------------------------------
    @property
    def num_projections(self) -> int:
        """Steps whose safety projection moved the parameters (alpha > 0)."""
        return 0 if self.projections is None else int(self.projections)

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety gradient was NaN/inf (counted on device)."""
        return 0 if self.nonfinite is None else int(self.nonfinite)

    def counters(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The device-side (projections, non-finite gradients) counters, created on ``device``."""
        if self.projections is None or self.nonfinite is None:
            self.projections = torch.zeros((), dtype=torch.int64, device=device)
            self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)
        return self.projections, self.nonfinite

    def warn_nonfinite(self, seen: int) -> None:
        """Warn about the non-finite gradients counted since the last warning (``seen`` in all)."""
        if seen > self._warned_nonfinite:
            warn_at_caller(
                f"SPAG: {seen - self._warned_nonfinite} earlier step(s) had a non-finite "
                "safety gradient; their projection was skipped (parameters kept theta+)",
                NonFiniteWarning,
            )
            self._warned_nonfinite = seen

    def triggered(self, loss_value: float, *, tau: float, tolerance: float, step: int) -> bool:
        """Whether the finite, rank-averaged ``loss_value`` of step ``step`` is above
        ``tau + tolerance`` (the host-side decision; also observed by the tau check)."""
        triggered = loss_value - tau > tolerance
        self.tau_check.observe(step, loss_value, tau, triggered)
        return triggered

    # -- the safety backward ----------------------------------------------------------------------
    def backward(
        self,
        loss: Tensor,
        params: list[Tensor],
        reducer: Reducer,
        *,
        grad_scaler: Any,
        optimizer: torch.optim.Optimizer,
        host_reads: bool,
    ) -> list[Tensor]:
        """Safety gradient into ``p.grad`` (reusing the consumed utility buffers).

        Returns the local gradient tensors, averaged over ranks and unscaled by ``grad_scaler``
        (the one ``scaler.step(optimizer)`` records overflow for): the global gradient of the
        rank-averaged loss, laid out like the parameters. The first time, if ``host_reads``
        (``skip_if_safe``), a zero gradient is warned about, and the tau check stops: tau is then
        not what is wrong.
        """
        with torch.no_grad():
            existing = local_tensors([p.grad for p in params if p.grad is not None])
            if existing:
                torch._foreach_zero_(existing)
        scaled = grad_scaler is not None and grad_scaler.is_enabled()
        if scaled:
            loss = grad_scaler.scale(loss)
        if reducer.mode == "sharded":
            # FSDP2 computes gradients of the unsharded parameters and reduce-scatters them into
            # the sharded ones in its own backward hooks; restricting backward to the sharded
            # parameters (inputs=) would bypass them. Parameters outside this optimizer that
            # require grad therefore also receive the safety gradient here.
            torch.autograd.backward(loss)
        else:
            torch.autograd.backward(loss, inputs=params)
        with torch.no_grad():
            grads = local_tensors(ensure_grads(params))  # unreached: zero component of g
            reducer.average_grads_(grads)
            if scaled and grads:
                _unscale_(grads, grad_scaler, optimizer)
            if host_reads and not self._zero_checked:  # one host read, once
                self._zero_checked = True
                if warn_if_zero_safety_gradient(reducer.sq_norm(grads, loss.device)):
                    self.tau_check.done = True
        return grads

    # -- state dict -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"num_projections": self.num_projections}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore the counts (non-finite gradients were counted into ``num_nonfinite`` on save)."""
        self._warned_nonfinite, self.reducer = 0, None
        self.projections = torch.tensor(int(state["num_projections"]), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=device)


def _unscale_(grads: list[Tensor], scaler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Undo ``scaler``'s scale, as ``GradScaler.unscale_`` does, and report overflow.

    Uses GradScaler's own kernel and device-side scale (no host read). An inf/NaN is added to
    the ``found_inf`` that ``scaler.step(optimizer)`` recorded, so the scaler's next ``update()``
    backs off exactly as for an overflowing utility gradient; the projection itself is skipped
    because the squared norm is then not finite.
    """
    scale = grad_scaler_scale(scaler)  # set by the scaler.scale() call in backward
    inv_scale = scale.double().reciprocal().float()
    found_inf = torch.zeros(1, dtype=torch.float32, device=scale.device)
    for (device, _), ([group], _) in group_by_device_and_dtype([grads]).items():
        found = torch.zeros(1, dtype=torch.float32, device=device)
        amp_unscale_(group, found, inv_scale.to(device))
        found_inf.add_(found.to(found_inf.device))
    target = grad_scaler_found_inf(scaler, optimizer)
    if target is not None:
        target.add_(found_inf.to(target.device).reshape(target.shape))


def warn_if_zero_safety_gradient(sq_norm: Tensor, name: str = "SPAG") -> bool:
    """Warn, and return True, if the safety gradient's squared norm ``sq_norm`` is zero.

    The projection moves the parameters by alpha * g (SPARD, Eq. 4): with g = 0 it never moves
    them, whatever the loss. On the first step that needs a projection this means the safety loss
    does not depend on the parameters the optimizer updates (a closure over another copy of the
    model, or a loss computed from detached outputs). Reads ``sq_norm`` on the host.
    """
    if float(sq_norm) != 0.0:
        return False
    warn_at_caller(
        f"{name}: the safety gradient is zero for every parameter this optimizer updates, so the "
        "projection can never move them: the safety loss does not depend on these parameters. Build "
        "the closure with the model object the optimizer updates (not another copy of the model, "
        "e.g. one loaded or deep-copied separately) and do not detach its outputs",
        ZeroSafetyGradientWarning,
    )
    return True
