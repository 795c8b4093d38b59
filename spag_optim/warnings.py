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
* :class:`ZeroSafetyGradientWarning`: the safety gradient is zero for every parameter the
  optimizer updates (a closure over another copy of the model, or detached outputs).
* :class:`RefusalsNotProducedWarning`: :func:`spag_optim.calibrate_tau` measured a refusal NLL
  above log 2 per token: the model does not say the given refusals, so tau is high.
* :class:`ReplacedHyperparameterWarning`: ``load_state_dict`` restored hyper-parameters that
  differ from the constructed ones.
* :class:`MissingCheckpointEntryWarning`: ``load_state_dict`` got a checkpoint without the
  defense's own entry (a plain optimizer's); its own state starts fresh.
* :class:`UnrestorablePositionWarning`: safe batches drawn from a ``DataLoader`` cannot restore
  their position; they restart.
* :class:`SafeDataChangedWarning`: ``load_state_dict`` restored a safe-batch position saved over
  other safe data (another count or contents); the resumed run draws other batches.
* :class:`EmptyNullSpaceWarning`: GuardSpace found an empty null space for some layers.
* :class:`UnverifiedBaseWarning`: ``load_guardspace`` could not confirm that the model is the
  base the adapters were built on (a file without fingerprints, or ``check_base=False``).
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
    "SafeDataChangedWarning",
    "SPAGWarning",
    "RefusalsNotProducedWarning",
    "TauTooLowWarning",
    "UnrestorablePositionWarning",
    "UnverifiedBaseWarning",
    "ZeroSafetyGradientWarning",
]


class SPAGWarning(UserWarning):
    """Base class of every warning ``spag_optim`` raises."""


class NonFiniteWarning(SPAGWarning, RuntimeWarning):
    """A NaN/inf safety loss or gradient: that step's safety part was skipped."""


class FrozenParametersWarning(SPAGWarning, RuntimeWarning):
    """No parameter of the optimizer requires grad: the safety step has nothing to act on."""


class TauTooLowWarning(SPAGWarning):
    """Each of the first steps projected far above tau: tau was likely not calibrated."""


class ZeroSafetyGradientWarning(SPAGWarning):
    """The safety gradient is zero: the safety loss does not depend on the updated parameters."""


class RefusalsNotProducedWarning(SPAGWarning):
    """The calibrated refusal NLL is above log 2 per token: the model does not say them."""


class ReplacedHyperparameterWarning(SPAGWarning):
    """A checkpoint's hyper-parameters replaced the ones the optimizer was constructed with."""


class MissingCheckpointEntryWarning(SPAGWarning):
    """A checkpoint lacked the defense's own entry: its own state starts fresh."""


class UnrestorablePositionWarning(SPAGWarning):
    """Safe batches over a ``DataLoader`` cannot restore their position: they restart."""


class SafeDataChangedWarning(SPAGWarning):
    """A safe-batch position was loaded over other safe data than it was saved with."""


class EmptyNullSpaceWarning(SPAGWarning):
    """GuardSpace's null space is empty for some layers: their adapters cannot change anything."""


class UnverifiedBaseWarning(SPAGWarning):
    """GuardSpace adapters were loaded onto a base model their file could not be checked against."""


class MalformedJudgeReplyWarning(SPAGWarning):
    """Judge replies without a valid score line were given the fallback score."""


class NotSPAGOptimizerWarning(SPAGWarning):
    """The Trainer's optimizer holds no SPAG optimizer: there is nothing to log."""
