"""What every defense built from an inner optimizer and a safety closure shares.

SPAG and the optimizer-shaped baselines (penalty, Lisa, SafeGrad) all take
``Defense(inner, safety_closure, **hyper_parameters)``. This base holds the closure, checks what it
returns (a scalar loss with a graph, or a clear error), counts steps, and saves the closure's
position (a :class:`~spag_optim.SafetyClosure` over :class:`~spag_optim.SafetyBatches`) in the
state dict so that a resumed run draws the same safe batches.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from .wrapper import OptimizerWrapper

__all__ = ["SafetyClosureOptimizer", "check_number"]


def check_number(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    """``value`` as a float, or a clear error when it is not a finite number above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum}, got {value}")
    return float(value)


class SafetyClosureOptimizer(OptimizerWrapper):
    """An :class:`OptimizerWrapper` that evaluates ``safety_closure`` inside its step."""

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
        """Optimizer steps taken through this wrapper."""
        return self._num_steps

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety loss or gradient was NaN/inf (their safety part was skipped)."""
        return self._num_nonfinite

    def _safety_loss(self) -> Tensor:
        """The closure's loss at the current parameters, checked, as a 0-dim tensor."""
        with torch.enable_grad():
            loss = self.safety_closure()
        if loss is None:
            raise TypeError(
                "safety_closure returned None; it must return the safety loss tensor (and must not "
                "call backward itself: the optimizer differentiates it)"
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

    def _wrapper_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"num_steps": self._num_steps, "num_nonfinite": self.num_nonfinite}
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
