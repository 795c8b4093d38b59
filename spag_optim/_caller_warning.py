"""Warnings attributed to the user's line, however deep inside a step they are raised.

A warning raised inside ``optimizer.step()`` passes through a varying number of frames: the
defense's rule, its base's step template, torch's step-hook wrapper, an LR scheduler's step
counter, ``GradScaler.step``. A fixed ``stacklevel`` names the right line on only one of these
paths; :func:`warn_at_caller` names the first frame outside this package and torch, so warning
filters, logs and ``-W error`` tracebacks point at the code that called the optimizer.

It is the one way ``spag_optim`` warns, always with a category from :mod:`spag_optim.warnings`.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from .warnings import SPAGWarning

__all__ = ["warn_at_caller"]

_INTERNAL = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (sys.modules[__package__], torch)
)


def warn_at_caller(message: str, category: type[SPAGWarning]) -> None:
    """``warnings.warn(message, category)`` with the stack level of the innermost frame whose code
    is neither in ``spag_optim`` nor in ``torch``."""
    if not issubclass(category, SPAGWarning):
        raise TypeError(f"{category.__name__} is not a spag_optim.warnings.SPAGWarning")
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
