"""Baseline defenses from the SPARD paper's comparison, in the same drop-in shape as SPAG.

Optimizer-shaped (``Baseline(inner, safety_closure, **hyper_parameters)``, like
:class:`~spag_optim.SPAGOptimizer`):

* :class:`PenaltyOptimizer`: minimise L_fit + lambda * max(L_safe - tau, 0).
* :class:`LisaOptimizer`: Huang et al. 2024, bi-state optimization with a proximal term.
* :class:`SafeGradOptimizer`: Yi et al. 2025, gradient surgery against the safety gradient.

Data-side:

* :class:`SafeInstrDataset` / :func:`safeinstr_mix`: Bianchi et al. 2023, mix ~3% safe samples
  into the fine-tuning data.
* :class:`PTSTPrompts`: Lyu et al. 2024, train without a safety system prompt, test with one.

:data:`OPTIMIZER_BASELINES` maps the method names used in the paper's tables and in the demo to
the optimizer classes, so a script can build any of them (or SPAG) from one ``--method`` flag.
"""

from .lisa import LisaOptimizer
from .penalty import PenaltyOptimizer
from .ptst import PLAIN_TEMPLATE, SAFETY_SYSTEM_PROMPT, PTSTPrompts
from .safegrad import SafeGradOptimizer
from .safeinstr import SafeInstrDataset, safeinstr_mix

#: Method name -> optimizer class; every class is ``cls(inner, safety_closure, **hyper_parameters)``.
OPTIMIZER_BASELINES = {
    "penalty": PenaltyOptimizer,
    "lisa": LisaOptimizer,
    "safegrad": SafeGradOptimizer,
}

__all__ = [
    "OPTIMIZER_BASELINES",
    "PenaltyOptimizer",
    "LisaOptimizer",
    "SafeGradOptimizer",
    "SafeInstrDataset",
    "safeinstr_mix",
    "PTSTPrompts",
    "SAFETY_SYSTEM_PROMPT",
    "PLAIN_TEMPLATE",
]
