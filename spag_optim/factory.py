"""make_spag: the SPAG rule of a ``mode``, as a sibling class chosen by name.

SPARD's projection (Eq. 3-4) is :class:`~spag_optim.SPAGOptimizer`; the authors' released code is
:class:`~spag_optim.AuthorsCodeSPAG`. They take the same arguments and save the same checkpoint
entry, so a script or a config can pick one with a string::

    optimizer = make_spag(inner, safety_closure, mode=config.mode, tau=config.tau)

and a resumed run can rebuild the rule a checkpoint was saved with::

    mode = checkpoint["spag"]["hyperparameters"]["mode"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .authors_code import AuthorsCodeSPAG
from .hyperparameters import MODES
from .optimizer import SPAGOptimizer

__all__ = ["SPAG_CLASSES", "SPAG_RULES", "make_spag"]

#: Mode -> the class that implements it.
SPAG_RULES = {"paper": SPAGOptimizer, "authors_code": AuthorsCodeSPAG}
#: Every SPAG rule, for ``isinstance(optimizer, SPAG_CLASSES)``.
SPAG_CLASSES = tuple(SPAG_RULES.values())


def make_spag(
    inner: torch.optim.Optimizer,
    safety_closure: Callable[[], Tensor],
    *,
    mode: str = "paper",
    **kwargs: Any,
) -> SPAGOptimizer | AuthorsCodeSPAG:
    """The SPAG optimizer of rule ``mode`` (``"paper"`` or ``"authors_code"``).

    Args:
        inner: the optimizer that takes the utility step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the scalar safety loss with its graph.
        mode: ``"paper"`` builds :class:`~spag_optim.SPAGOptimizer` (SPARD, Eq. 3-4),
            ``"authors_code"`` builds :class:`~spag_optim.AuthorsCodeSPAG` (the released code).
        **kwargs: the class's other keyword arguments (``tau``, ``tolerance``, ...).

    Example:
        >>> import torch
        >>> from spag_optim import make_spag
        >>> model = torch.nn.Linear(4, 2)
        >>> inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> make_spag(inner, lambda: model.weight.pow(2).sum(), mode="authors_code", tau=0.1).mode
        'authors_code'
    """
    if mode not in SPAG_RULES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return SPAG_RULES[mode](inner, safety_closure, mode=mode, **kwargs)
