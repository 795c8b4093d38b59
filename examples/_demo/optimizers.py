"""How a method turns the shared AdamW into its defense: the optimizer factories ``Method.wrapper``
points at, and how many steps each defense acted on.

Every factory has one shape, ``factory(inner, safety_closure, config, **options)``, so the attack
builds SPAG and the optimizer-shaped baselines of ``spag_optim.baselines`` the same way: AdamW over
the LoRA weights, a safety closure over the same selected safe examples, and the method's options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spag_optim import make_spag
from spag_optim.baselines import OPTIMIZER_BASELINES

from .config import DemoConfig

__all__ = ["Wrapper", "spag", "penalty", "lisa", "safegrad", "interventions"]


#: ``factory(inner, safety_closure, config, **options) -> optimizer``.
Wrapper = Callable[..., torch.optim.Optimizer]


def spag(
    inner: torch.optim.Optimizer,
    safety_closure: Callable[[], Tensor],
    config: DemoConfig,
    **options: Any,
) -> torch.optim.Optimizer:
    """SPAG with the demo's tau; ``options`` are its other keyword arguments (``mode`` picks
    ``SPAGOptimizer`` or ``AuthorsCodeSPAG``)."""
    return make_spag(inner, safety_closure, tau=config.tau, **options)


def penalty(
    inner: torch.optim.Optimizer,
    safety_closure: Callable[[], Tensor],
    config: DemoConfig,
    **options: Any,
) -> torch.optim.Optimizer:
    """The hinge penalty, with the same threshold as SPAG's constraint (the demo's tau)."""
    return OPTIMIZER_BASELINES["penalty"](inner, safety_closure, tau=config.tau, **options)


def lisa(
    inner: torch.optim.Optimizer,
    safety_closure: Callable[[], Tensor],
    config: DemoConfig,
    **options: Any,
) -> torch.optim.Optimizer:
    """Lisa's bi-state optimizer (it has no threshold: tau does not apply)."""
    return OPTIMIZER_BASELINES["lisa"](inner, safety_closure, **options)


def safegrad(
    inner: torch.optim.Optimizer,
    safety_closure: Callable[[], Tensor],
    config: DemoConfig,
    **options: Any,
) -> torch.optim.Optimizer:
    """SafeGrad's gradient surgery (no threshold, no hyper-parameters)."""
    return OPTIMIZER_BASELINES["safegrad"](inner, safety_closure, **options)


def interventions(optimizer: torch.optim.Optimizer) -> int:
    """Steps on which the safety constraint changed the update, the table's ``projections``:
    SPAG's projections, the penalty's active hinge, SafeGrad's projected conflicting gradients;
    0 for AdamW alone and for Lisa (whose alignment steps come from a schedule, not the loss).
    Every defense reports it as ``stats()["num_interventions"]``."""
    stats = getattr(optimizer, "stats", None)
    return int(stats()["num_interventions"]) if callable(stats) else 0
