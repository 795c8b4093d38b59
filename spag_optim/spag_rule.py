"""What the two SPAG rules share, as functions both call: no base class between them.

:class:`~spag_optim.SPAGOptimizer` (the paper's Eq. 3-4) and :class:`~spag_optim.AuthorsCodeSPAG`
(the authors' released rule) take the same arguments, save the same checkpoint entry and decide on
the host in the same way whether a step's safety loss calls for the rule (SPARD, ICML 2026,
Algorithm 1: act when the loss exceeds tau). Each rule's class is the step template
(:class:`~spag_optim.SafetyClosureOptimizer`) plus its own rule; :func:`spag_rule` gives both the
constructor, the checkpoint hooks and the counters from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .distributed import Reducer, check_distributed_mode, reject_deepspeed
from .hyperparameters import (
    check_hyperparameters,
    check_mode,
    checked_hyperparameters,
    checked_saved,
    hyperparameters_of,
    restore,
)
from .safety_gradient import SafetyGradient, check_grad_scaler, host_stats
from .safety_wrapper import SafetyClosureOptimizer

__all__ = ["spag_rule", "reducer_for", "host_decision", "safety_backward"]


def spag_rule(mode: str, *, sharded: bool, setup: Callable[[Any], None] | None = None):
    """Class decorator for a SPAG rule implementing ``mode``: the :data:`HYPERPARAMETERS
    <spag_optim.hyperparameters.HYPERPARAMETERS>` as checked attributes, the ``"spag"`` checkpoint
    entry and ``num_projections`` counter, the shared constructor (``setup(optimizer)`` adds the
    rule's own state) and the checkpoint hooks. ``sharded``: whether the rule supports sharded
    (FSDP2/DTensor) parameters."""

    def decorate(cls: type) -> type:
        checked_hyperparameters(cls)
        cls.STATE_KEY = "spag"
        cls.STATE_FIELDS = SafetyClosureOptimizer.STATE_FIELDS + ("num_projections",)
        cls.WARN_NAME = "SPAG"
        cls.INTERVENTIONS = "num_projections"
        cls.COUNTERS = ("num_projections",)
        cls.__init__ = _constructor(mode, sharded, setup)
        cls.__init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls._wrapper_state = _wrapper_state
        cls._check_wrapper_state = _check_wrapper_state
        cls._load_wrapper_state = _load_wrapper_state
        cls._frozen_stats = _frozen_stats
        return cls

    return decorate


def _constructor(implemented: str, sharded: bool, setup: Callable[[Any], None] | None):
    """The constructor of the rule implementing ``implemented`` (its class documents the args)."""

    def __init__(
        self: Any,
        inner: torch.optim.Optimizer,
        safety_closure: Callable[[], Tensor],
        *,
        tau: float = 0.2,
        trust_region: float | str | None = "relative",
        rho: float = 1.0,
        mode: str = implemented,
        tolerance: float = 0.0,
        alpha_max: float = 1.0,
        eps: float = 1e-8,
        skip_if_safe: bool = True,
        projection_iterations: int = 1,
        distributed: str | None = "auto",
        process_group: Any = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        check_mode(mode, implemented)
        reject_deepspeed(inner, safety_closure)
        SafetyClosureOptimizer.__init__(self, inner, safety_closure)
        hyperparameters = check_hyperparameters(
            tau=tau,
            trust_region=trust_region,
            rho=rho,
            mode=mode,
            tolerance=tolerance,
            alpha_max=alpha_max,
            eps=eps,
            skip_if_safe=skip_if_safe,
            projection_iterations=projection_iterations,
        )
        check_distributed_mode(distributed)
        check_grad_scaler(grad_scaler)
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        self.distributed = distributed
        self.process_group = process_group
        self.grad_scaler = grad_scaler
        self._safety_gradient = SafetyGradient(implemented, sharded=sharded)
        if setup is not None:
            setup(self)

    return __init__


def reducer_for(optimizer: Any, params: list[Tensor]) -> Reducer:
    """The rank-averaging :class:`~spag_optim.distributed.Reducer` of ``optimizer``'s step."""
    return optimizer._safety_gradient.reducer_for(
        params,
        distributed=optimizer.distributed,
        safety_closure=optimizer.safety_closure,
        process_group=optimizer.process_group,
    )


def host_decision(optimizer: Any, loss_value: float) -> bool:
    """Whether the rule acts on the (rank-averaged) safety loss read on the host: only when it is
    finite and above ``tau + tolerance``; otherwise ``last_stats`` says why not."""
    if not math.isfinite(loss_value):
        optimizer._skip_nonfinite(
            "loss",
            loss_value,
            "this step's projection was skipped and the "
            "parameters kept the inner optimizer's update",
        )
        optimizer.last_stats = host_stats(loss_value, False, 0.0, float("nan"))
        return False
    if not optimizer._safety_gradient.triggered(
        loss_value, tau=optimizer.tau, tolerance=optimizer.tolerance, step=optimizer._num_steps
    ):
        optimizer.last_stats = host_stats(loss_value, False, 0.0, float("nan"))  # no backward
        return False
    return True


def safety_backward(
    optimizer: Any, local_loss: Tensor, params: list[Tensor], reducer: Reducer
) -> list[Tensor]:
    """The rank-averaged safety gradient of ``local_loss`` (scaled by the optimizer's
    ``GradScaler`` and unscaled), see :meth:`SafetyGradient.backward
    <spag_optim.safety_gradient.SafetyGradient.backward>`."""
    return optimizer._safety_gradient.backward(
        local_loss,
        params,
        reducer,
        grad_scaler=optimizer.grad_scaler,
        optimizer=optimizer,
        host_reads=optimizer.skip_if_safe,
    )


def _frozen_stats(self: Any) -> dict[str, Any]:
    return host_stats(float("nan"), False, 0.0, float("nan"))


def _wrapper_state(self: Any) -> dict[str, Any]:
    return {
        **SafetyClosureOptimizer._wrapper_state(self),
        **self._safety_gradient.state_dict(),
        "hyperparameters": hyperparameters_of(self),
    }


def _check_wrapper_state(self: Any, state: Any) -> None:
    SafetyClosureOptimizer._check_wrapper_state(self, state)
    if "hyperparameters" in state:  # absent from checkpoints of earlier versions
        checked_saved(hyperparameters_of(self), state["hyperparameters"])


def _load_wrapper_state(self: Any, state: dict[str, Any]) -> None:
    SafetyClosureOptimizer._load_wrapper_state(self, state)
    if "hyperparameters" in state:
        for name, value in restore(hyperparameters_of(self), state["hyperparameters"]).items():
            setattr(self, name, value)
    device = self.params()[0].device if self.params() else torch.device("cpu")
    self._safety_gradient.load_state_dict(state, device)
