"""The defenses the tests run, by name: one registry for every test that loops over them.

SPARD's comparison (Sec. 5) runs SPAG, the authors'-code rule and the optimizer-shaped baselines
(Penalty, Lisa, SafeGrad) as drop-in wrappers of one inner optimizer, ``cls(inner, safety_closure,
**options)``. :data:`DEFENSES` names each class once; :func:`build_defense` builds one with
:data:`CONTRACT_OPTIONS`, the options the wrapper-contract tests use, updated by the caller's::

    opt = build_defense("lisa", torch.optim.SGD(model.parameters(), lr=0.1), closure,
                        finetune_steps=2)

A test that needs other values for its scenario (``tau=0.0`` so that every step acts) passes them;
the options it does not pass keep the contract values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from spag_optim import AuthorsCodeSPAG, SafetyClosureOptimizer, SPAGOptimizer
from spag_optim.baselines import OPTIMIZER_BASELINES

#: Defense name -> its class: both SPAG rules, then every optimizer baseline.
DEFENSES: dict[str, type[SafetyClosureOptimizer]] = {
    "spag": SPAGOptimizer,
    "spag_authors_code": AuthorsCodeSPAG,
    "spag_repeated": SPAGOptimizer,  # projection_iterations > 1 (CONTRACT_OPTIONS)
    **OPTIMIZER_BASELINES,
}
#: The SPAG rules among :data:`DEFENSES`.
SPAG_NAMES = ("spag", "spag_authors_code", "spag_repeated")

#: Options that make each defense act within a few steps of the toy problems: SPAG's and the
#: penalty's tau below the safety loss of ``pair_model.PairLoss``, and a Lisa cycle of 2 alignment
#: + 3 fine-tuning steps, so that a short run passes both of Lisa's states.
CONTRACT_OPTIONS: dict[str, dict[str, Any]] = {
    "spag": {"tau": 0.5},
    "spag_authors_code": {"tau": 0.5},
    "spag_repeated": {"tau": 0.5, "projection_iterations": 3},
    "penalty": {"lam": 0.5, "tau": 0.1},
    "safegrad": {},
    "lisa": {"alignment_steps": 2, "finetune_steps": 3, "rho": 0.3},
}


def build_defense(
    name: str, inner: torch.optim.Optimizer, safety_closure: Callable[[], Any], **options: Any
) -> SafetyClosureOptimizer:
    """``DEFENSES[name](inner, safety_closure, **CONTRACT_OPTIONS[name], **options)``, the caller's
    ``options`` replacing the contract values they name."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; the registry has {sorted(DEFENSES)}")
    return DEFENSES[name](inner, safety_closure, **{**CONTRACT_OPTIONS.get(name, {}), **options})
