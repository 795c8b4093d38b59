"""Model surgery shared by :func:`.apply_guardspace`, :func:`.load_guardspace` and
:func:`.merge_guardspace` (arXiv 2510.14301, Sec. 3): all or nothing.

Each of them first builds every replacement module, and only then puts them all in place with
:func:`swap_modules` and sets ``requires_grad`` with :func:`train_only_adapters`, neither of which
can fail part-way on a well-formed model. A failure while building (bad data, a damaged file, out
of memory) therefore leaves the model exactly as it was, and a retry is not refused. Peak memory is
unchanged by this order: the replaced modules stay referenced until the call returns either way.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .layer import GuardSpaceLinear

__all__ = ["adapter_parameters", "swap_modules", "train_only_adapters"]


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable GuardSpace parameters (``adapter_A``, ``adapter_B`` of every layer)."""
    return [
        p
        for m in model.modules()
        if isinstance(m, GuardSpaceLinear)
        for p in (m.adapter_A, m.adapter_B)
    ]


def swap_modules(model: nn.Module, replacements: Mapping[str, nn.Module]) -> None:
    """Put each module of ``replacements`` (``{qualified name: module}``) in place of the old one.

    Every parent is looked up before the first assignment, so a name that does not resolve raises
    with the model untouched.
    """
    slots = []
    for name, module in replacements.items():
        parent, _, child = name.rpartition(".")
        slots.append((model.get_submodule(parent) if parent else model, child, module))
    for parent_module, child, module in slots:
        setattr(parent_module, child, module)


def train_only_adapters(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` but the GuardSpace adapters."""
    for param in model.parameters():
        param.requires_grad_(False)
    for param in adapter_parameters(model):
        param.requires_grad_(True)
