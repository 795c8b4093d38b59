"""Every private torch internal that ``spag_optim`` relies on, in one place.

Each accessor says what it reads and why torch's public API does not suffice. When torch changes
one of these, this is the only file to fix; ``tests/test_torch_compat.py`` exercises every accessor
on the installed torch and fails outside :data:`TORCH_MIN` .. :data:`TORCH_TESTED_BELOW`, so a new
torch release is checked here before it is declared supported.

Not routed here: the ``torch._foreach_*`` ops (``_foreach_norm``, ``_foreach_mul_``, ...). They are
the registered operators ``torch.optim``'s own foreach implementations call, part of torch's
operator schema rather than Python-level internals, and an extra call layer in every hot path would
buy nothing. ``DTensor`` is used only through its public API (``torch.distributed.tensor``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "TORCH_MIN",
    "TORCH_TESTED_BELOW",
    "group_by_device_and_dtype",
    "grad_scaler_scale",
    "grad_scaler_found_inf",
    "amp_unscale_",
    "init_optimizer_hooks",
    "optimizer_hooks",
    "patch_step_function",
]

#: Oldest torch supported (setup.cfg's ``torch>=`` bound says the same).
TORCH_MIN = (2, 1)
#: First torch minor version these internals have *not* been checked against.
TORCH_TESTED_BELOW = (2, 14)

#: The hook dictionaries ``torch.optim.Optimizer.__init__`` creates, by short name.
_HOOK_DICTS = {
    "step_pre": "_optimizer_step_pre_hooks",
    "step_post": "_optimizer_step_post_hooks",
    "state_dict_pre": "_optimizer_state_dict_pre_hooks",
    "state_dict_post": "_optimizer_state_dict_post_hooks",
    "load_state_dict_pre": "_optimizer_load_state_dict_pre_hooks",
    "load_state_dict_post": "_optimizer_load_state_dict_post_hooks",
}


def group_by_device_and_dtype(tensorlists: Sequence[Sequence[Tensor]]) -> dict:
    """``torch.utils._foreach_utils._group_tensors_by_device_and_dtype``.

    Returns ``{(device, dtype): (tensorlists restricted to that group, unused)}``, the grouping
    ``torch.optim``'s foreach paths use so each ``torch._foreach_*`` call sees one device and dtype.
    torch has no public equivalent; writing our own would add a Python loop per tensor.
    """
    return _group_tensors_by_device_and_dtype([list(t) for t in tensorlists])


def grad_scaler_scale(scaler: Any) -> Tensor:
    """``GradScaler._scale``: the current loss scale as a device tensor.

    The public ``get_scale()`` returns a Python float, i.e. a host-device sync on every step;
    unscaling on the device needs the tensor itself. Set by ``scaler.scale(loss)``.
    """
    scale = scaler._scale
    if scale is None:
        raise RuntimeError("GradScaler has no scale yet; call scaler.scale(loss).backward() first")
    return scale


def grad_scaler_found_inf(scaler: Any, optimizer: torch.optim.Optimizer) -> Tensor | None:
    """The ``found_inf`` tensor ``scaler`` recorded for ``optimizer`` in this iteration, or None.

    Reads ``GradScaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]`` (first device).
    Adding to it makes the scaler's next ``update()`` back off as for an overflowing gradient;
    the public API only lets the scaler itself record overflows, through ``unscale_``/``step``.
    """
    state = scaler._per_optimizer_states.get(id(optimizer))
    recorded = (state or {}).get("found_inf_per_device") or {}
    return next(iter(recorded.values())) if recorded else None


def amp_unscale_(grads: list[Tensor], found_inf: Tensor, inv_scale: Tensor) -> None:
    """``torch._amp_foreach_non_finite_check_and_unscale_``: GradScaler's own unscale kernel.

    Multiplies ``grads`` (one device and dtype) by ``inv_scale`` in place and sets ``found_inf`` to
    1 if any entry is inf/NaN, without a host read. ``GradScaler.unscale_`` is public but unscales
    the optimizer's ``.grad`` fields, not the separate safety gradient.
    """
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)


def init_optimizer_hooks(optimizer: torch.optim.Optimizer) -> None:
    """Set up the hook bookkeeping ``torch.optim.Optimizer.__init__`` would, and nothing else.

    A wrapper shares its inner optimizer's ``param_groups``, so it cannot call
    ``Optimizer.__init__`` (which builds groups of its own); the public ``register_*_hook`` methods
    then need these private dictionaries and the patched ``step`` that fires the step hooks.
    """
    torch._C._log_api_usage_once("python.optimizer")
    for attr in _HOOK_DICTS.values():
        setattr(optimizer, attr, OrderedDict())
    patch_step_function(optimizer)


def optimizer_hooks(optimizer: torch.optim.Optimizer, kind: str) -> OrderedDict:
    """The hooks registered on ``optimizer`` through the public ``register_<kind>_hook`` methods.

    ``kind`` is one of ``step_pre``, ``step_post``, ``state_dict_pre``, ``state_dict_post``,
    ``load_state_dict_pre``, ``load_state_dict_post``. A wrapper's own ``state_dict`` /
    ``load_state_dict`` must fire them; torch exposes no public way to read them.
    """
    return getattr(optimizer, _HOOK_DICTS[kind])


def patch_step_function(optimizer: torch.optim.Optimizer) -> None:
    """``Optimizer._patch_step_function``: wrap ``type(optimizer).step`` so step hooks fire.

    Needed again whenever the object's class changes or it is unpickled, as torch does itself.
    """
    optimizer._patch_step_function()
