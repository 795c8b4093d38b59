"""SPAG: safety projection after each optimizer step (SPARD, ICML 2026).

``SPAGOptimizer(torch.optim.AdamW(...), safety_closure)`` wraps any torch optimizer; see
:mod:`spag_optim.optimizer` for the algorithm and :mod:`spag_optim.safety_data` for building the
closure from a safe dataset. :class:`AuthorsCodeSPAG` is the authors' released rule, a sibling
class; :func:`make_spag` builds either from ``mode=``. Every warning is a
:class:`SPAGWarning`, by cause in :mod:`spag_optim.warnings` (filter by category).
"""

from spard_io import distribution_version

from . import warnings
from .authors_code import AuthorsCodeSPAG
from .config import SPAGConfig
from .factory import SPAG_CLASSES, make_spag
from .optimizer import SPAGOptimizer
from .safety_data import SafetyBatches, SafetyClosure, calibrate_tau, make_safety_closure
from .safety_wrapper import SafetyClosureOptimizer
from .warnings import SPAGWarning
from .wrapper import OptimizerWrapper

__version__ = distribution_version()

__all__ = [
    "SPAGOptimizer",
    "SPAGConfig",
    "AuthorsCodeSPAG",
    "make_spag",
    "SPAG_CLASSES",
    "OptimizerWrapper",
    "SafetyClosureOptimizer",
    "SafetyBatches",
    "SafetyClosure",
    "make_safety_closure",
    "calibrate_tau",
    "SPAGWarning",
    "warnings",
]
