"""A ``torch.optim.Optimizer`` that wraps another one and shares its state.

SPAG and the optimizer-shaped baselines all run an *inner* optimizer (AdamW, SGD, ...) and add
something around its step. Users hand the wrapper to code written for plain optimizers (LR
schedulers, GradScaler, Hugging Face ``Trainer``, Accelerate), so the wrapper must *be* that
optimizer as far as such code can tell:

* ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's own objects (properties,
  so they stay shared after ``inner.load_state_dict`` replaces them): a scheduler that sets
  ``group["lr"]`` changes the learning rate the inner step uses.
* ``state_dict()`` is the inner optimizer's state dict plus one extra key holding the wrapper's own
  state, so checkpoints keep the standard layout and resume exactly.
* step pre/post hooks and state-dict hooks registered on the wrapper fire as torch's do.

Like davda54/sam, the class is small enough to read in one sitting; subclasses implement
:meth:`step` and, for their own state, :meth:`_wrapper_state` / :meth:`_load_wrapper_state`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._caller_warning import warn_at_caller
from ._torch_compat import init_optimizer_hooks, optimizer_hooks, patch_step_function
from .warnings import MissingCheckpointEntryWarning

__all__ = ["OptimizerWrapper"]


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class of optimizers that run ``inner`` and act around its step."""

    #: Key under which the wrapper's own state is stored inside the inner state dict.
    STATE_KEY = "wrapper"

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(
                f"{type(self).__name__} wraps a torch.optim.Optimizer, got {type(inner).__name__}; "
                "pass e.g. torch.optim.AdamW(model.parameters(), lr=5e-5)"
            )
        if isinstance(inner, OptimizerWrapper):
            raise TypeError(
                f"{type(self).__name__} cannot wrap another wrapper ({type(inner).__name__}): "
                "stacking two defenses would run two projections per step; wrap the base optimizer"
            )
        # torch.optim.Optimizer.__init__ would build param groups of our own; we only need its
        # hook bookkeeping, set up exactly as torch does.
        self.inner = inner
        init_optimizer_hooks(self)

    # -- shared state ---------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.inner.param_groups = value

    @property
    def state(self):  # type: ignore[override]
        return self.inner.state

    @state.setter
    def state(self, value) -> None:
        self.inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.inner.defaults = value

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        patch_step_function(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()}\n  inner={self.inner!r})"

    def _extra_repr(self) -> str:
        return ""

    # -- delegated optimizer API ----------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.inner.add_param_group(param_group)

    def params(self) -> list[torch.Tensor]:
        """Every parameter of every group that requires a gradient, in group order."""
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    # -- state dict -----------------------------------------------------------------------------
    def _wrapper_state(self) -> dict[str, Any]:
        """The wrapper's own state (plain Python values or CPU tensors)."""
        return {}

    def _check_wrapper_state(self, state: Any) -> None:
        """Raise, naming what is missing or wrong, if :meth:`_load_wrapper_state` could fail."""

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_wrapper_state` returned (after :meth:`_check_wrapper_state`)."""

    def state_dict(self) -> dict[str, Any]:
        for pre_hook in optimizer_hooks(self, "state_dict_pre").values():
            pre_hook(self)
        state_dict = self.inner.state_dict()
        state_dict[self.STATE_KEY] = self._wrapper_state()
        for post_hook in optimizer_hooks(self, "state_dict_post").values():
            hook_result = post_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for pre_hook in optimizer_hooks(self, "load_state_dict_pre").values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{type(self).__name__}.load_state_dict takes the dict an optimizer's state_dict() "
                f"returned, got {type(state_dict).__name__}"
            )
        state_dict = dict(state_dict)  # never mutate the caller's checkpoint
        own = state_dict.pop(self.STATE_KEY, None)
        # All or nothing: the wrapper's entry is checked whole, then torch checks the inner state
        # (groups and sizes) before changing anything, and only then is anything loaded.
        if own is not None:
            self._check_wrapper_state(own)
        self.inner.load_state_dict(state_dict)
        if own is None:
            name = type(self).__name__
            warn_at_caller(
                f"{name}.load_state_dict: the checkpoint has no {self.STATE_KEY!r} entry (saved from "
                f"a plain optimizer?); the inner optimizer's state was loaded and {name}'s own state "
                "starts fresh",
                MissingCheckpointEntryWarning,
            )
        else:
            self._load_wrapper_state(own)
        for post_hook in optimizer_hooks(self, "load_state_dict_post").values():
            post_hook(self)
