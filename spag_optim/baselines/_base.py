"""What the optimizer-shaped baselines share: a safety closure, its validation and its state.

Each baseline (penalty, Lisa, SafeGrad) has SPAGOptimizer's constructor shape,
``Baseline(inner, safety_closure, **hyper_parameters)``, and is an
:class:`~spag_optim.wrapper.OptimizerWrapper`, so schedulers, state dicts, hooks and
``add_param_group`` behave as with SPAG and as with a plain torch optimizer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..wrapper import OptimizerWrapper

__all__ = ["SafetyClosureBaseline", "check_number"]


def check_number(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    """``value`` as a float, or a clear error when it is not a finite number above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum}, got {value}")
    return float(value)


class SafetyClosureBaseline(OptimizerWrapper):
    """Base of the baselines: holds ``safety_closure`` and counts steps.

    Subclasses implement :meth:`_step` (the inner step plus their rule) and extend
    :meth:`_wrapper_state` / :meth:`_load_wrapper_state` with their own state, calling super.
    """

    def __init__(self, inner: torch.optim.Optimizer, safety_closure: Callable[[], Tensor]) -> None:
        super().__init__(inner)
        if not callable(safety_closure):
            raise TypeError(
                "safety_closure must be a callable returning the safety loss tensor, e.g. "
                "spag_optim.make_safety_closure(model, SafetyBatches(safe_dataset))"
            )
        self.safety_closure = safety_closure
        self.last_stats: dict[str, Any] = {}
        self._num_steps = 0
        self._num_nonfinite = 0

    @property
    def num_steps(self) -> int:
        return self._num_steps

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety loss or gradient was NaN/inf (the safety part was skipped)."""
        return self._num_nonfinite

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:  # type: ignore[override]
        """Optional utility ``closure`` (re-evaluates the loss and calls backward), then
        :meth:`_step`; returns the utility loss like torch optimizers do."""
        utility_loss = None
        if closure is not None:
            with torch.enable_grad():
                utility_loss = closure()
        self._step(self.params())
        self._num_steps += 1
        return utility_loss

    def _step(self, params: list[Tensor]) -> None:
        raise NotImplementedError

    def _safety_loss(self) -> Tensor:
        """The closure's loss at the current parameters, checked, as a 0-dim tensor."""
        with torch.enable_grad():
            loss = self.safety_closure()
        if loss is None:
            raise TypeError(
                "safety_closure returned None; it must return the safety loss tensor (and must "
                "not call backward itself)"
            )
        if not isinstance(loss, Tensor):
            raise TypeError(f"safety_closure must return a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"safety_closure must return a scalar loss, got shape {tuple(loss.shape)}; "
                "reduce it (e.g. .mean())"
            )
        if loss.grad_fn is None:
            raise ValueError(
                "the safety loss has no grad_fn: compute it with gradients enabled from the "
                "parameters being optimized (not under torch.no_grad(), not .detach()ed)"
            )
        return loss.reshape(())

    def _skip_nonfinite(self, what: str, value: float) -> None:
        self._num_nonfinite += 1
        warnings.warn(
            f"{type(self).__name__}: the safety {what} is {value}; its part of this step was "
            "skipped",
            RuntimeWarning,
            stacklevel=4,
        )

    def _wrapper_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"num_steps": self._num_steps, "num_nonfinite": self._num_nonfinite}
        saver = getattr(self.safety_closure, "state_dict", None)
        if callable(saver):
            state["safety_closure"] = saver()
        return state

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        self._num_steps = int(state["num_steps"])
        self._num_nonfinite = int(state["num_nonfinite"])
        if "safety_closure" in state:
            loader = getattr(self.safety_closure, "load_state_dict", None)
            if not callable(loader):
                raise ValueError(
                    "the checkpoint holds the safety closure's position but this safety_closure "
                    "has no load_state_dict; build it with spag_optim.make_safety_closure"
                )
            loader(state["safety_closure"])
