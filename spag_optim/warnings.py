"""The warnings ``spag_optim`` raises: one category per cause, all under :class:`SPAGWarning`.

Every warning comes from :func:`spag_optim._caller_warning.warn_at_caller`, attributed to the
first line outside ``spag_optim`` and ``torch`` (the user's ``optimizer.step()`` or
``load_state_dict`` call), so filter by category, never by message::

    import warnings
    from spag_optim.warnings import SPAGWarning, TauTooLowWarning

    warnings.simplefilter("ignore", TauTooLowWarning)   # one cause
    warnings.simplefilter("error", SPAGWarning)         # every spag_optim warning is an error

Categories:

* :class:`SPAGWarning` (a ``UserWarning``): the base of all below.
* :class:`NonFiniteWarning` (also a ``RuntimeWarning``): a NaN/inf safety loss or gradient; that
  step's safety part was skipped (counted in ``num_nonfinite``).
* :class:`FrozenParametersWarning` (also a ``RuntimeWarning``): no parameter requires grad, so the
  safety step has nothing to act on.
* :class:`TauTooLowWarning`: each of the first steps projected far above ``tau``; calibrate it
  (:func:`spag_optim.calibrate_tau`).
* :class:`ReplacedHyperparameterWarning`: ``load_state_dict`` restored hyper-parameters that
  differ from the constructed ones.
* :class:`MissingCheckpointEntryWarning`: ``load_state_dict`` got a checkpoint without the
  defense's own entry (a plain optimizer's); its own state starts fresh.
* :class:`UnrestorablePositionWarning`: safe batches drawn from a ``DataLoader`` cannot restore
  their position; they restart.
* :class:`EmptyNullSpaceWarning`: GuardSpace found an empty null space for some layers.
* :class:`MalformedJudgeReplyWarning`: judge replies without a score were given the fallback.
* :class:`NotSPAGOptimizerWarning`: the Trainer callback found no SPAG optimizer to log.

Progress (a resolved ``distributed`` mode, a retried request, a completed step) goes to
``logging``, never to ``warnings``; ``dpp_select`` has its own categories.
"""

from __future__ import annotations

__all__ = [
    "EmptyNullSpaceWarning",
    "FrozenParametersWarning",
    "MalformedJudgeReplyWarning",
    "MissingCheckpointEntryWarning",
    "NonFiniteWarning",
    "NotSPAGOptimizerWarning",
    "ReplacedHyperparameterWarning",
    "SPAGWarning",
    "TauTooLowWarning",
    "UnrestorablePositionWarning",
]


class SPAGWarning(UserWarning):
    """Base class of every warning ``spag_optim`` raises."""


class NonFiniteWarning(SPAGWarning, RuntimeWarning):
    """A NaN/inf safety loss or gradient: that step's safety part was skipped."""


class FrozenParametersWarning(SPAGWarning, RuntimeWarning):
    """No parameter of the optimizer requires grad: the safety step has nothing to act on."""


class TauTooLowWarning(SPAGWarning):
    """Each of the first steps projected far above tau: tau was likely not calibrated."""


class ReplacedHyperparameterWarning(SPAGWarning):
    """A checkpoint's hyper-parameters replaced the ones the optimizer was constructed with."""


class MissingCheckpointEntryWarning(SPAGWarning):
    """A checkpoint lacked the defense's own entry: its own state starts fresh."""


class UnrestorablePositionWarning(SPAGWarning):
    """Safe batches over a ``DataLoader`` cannot restore their position: they restart."""


class EmptyNullSpaceWarning(SPAGWarning):
    """GuardSpace's null space is empty for some layers: their adapters cannot change anything."""


class MalformedJudgeReplyWarning(SPAGWarning):
    """Judge replies without a valid score line were given the fallback score."""


class NotSPAGOptimizerWarning(SPAGWarning):
    """The Trainer's optimizer holds no SPAG optimizer: there is nothing to log."""
