"""SPAG's statistics in a Hugging Face ``Trainer``'s logs.

The Trainer cannot know whether the safety projection (SPARD, ICML 2026, Algorithm 1) is doing
anything: :class:`SPAGLoggingCallback` (added by
:class:`~spag_optim.integrations.trainer.SPAGTrainer` and
:func:`~spag_optim.integrations.trainer.attach_spag`, or by :func:`add_spag_logging` for a SPAG
optimizer with any other closure) reads ``SPAGOptimizer.stats()`` after every optimizer step and
adds a summary of the steps since the previous log to each log entry. Re-exported by
:mod:`spag_optim.integrations.trainer`.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .._caller_warning import warn_at_caller
from ..factory import SPAG_CLASSES
from ..warnings import NotSPAGOptimizerWarning

__all__ = ["SPAGLoggingCallback", "add_spag_logging", "find_spag_optimizer"]


def find_spag_optimizer(optimizer: Any) -> Any | None:
    """The SPAG optimizer (either rule, :data:`~spag_optim.SPAG_CLASSES`) inside ``optimizer``,
    unwrapping Accelerate's ``AcceleratedOptimizer`` (and any other wrapper that keeps the wrapped
    one as ``.optimizer``);
    None if there is none. Recognised by type: the baselines also have ``last_stats``."""
    seen: set[int] = set()
    while optimizer is not None and id(optimizer) not in seen:
        if isinstance(optimizer, SPAG_CLASSES):
            return optimizer
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return None


class SPAGLoggingCallback(TrainerCallback):
    """Adds SPAG's statistics to every Trainer log entry.

    Keys added, averaged over the window of optimizer steps since the previous log entry (so with
    ``logging_steps=10`` each value summarises ten steps):

    - ``spag/safety_loss``: mean safety loss measured after the utility step;
    - ``spag/projected``: fraction of the window's steps where the projection fired;
    - ``spag/alpha``: mean projection step size over the window (0 on steps that did not project);
    - ``spag/projections``: projections since training began: the optimizer's own counter
      (``num_interventions``, saved in its checkpoint), so it continues after a resume.

    And ``spag/refusals_not_produced`` (1.0) when ``refusals_not_produced`` is set: the run goes on
    with a tau calibrated on refusals the model does not say (``targets="given"``), so the defense
    barely acts.

    ``history`` keeps every step's stats as floats for scripts that want more than the logs.
    Pass ``optimizer`` when the Trainer's own optimizer is not the SPAG one (or not yet built);
    otherwise it is found in the callback arguments, through Accelerate's wrapper.
    """

    def __init__(self, optimizer: Any | None = None):
        self.optimizer = optimizer
        self.history: list[dict[str, float]] = []
        self.projections = 0
        self._since_log: list[dict[str, float]] = []
        self._warned = False
        self.refusals_not_produced = False

    def _spag(self, optimizer: Any) -> Any | None:
        spag = find_spag_optimizer(self.optimizer if self.optimizer is not None else optimizer)
        if spag is None and not self._warned:
            warn_at_caller(
                "SPAGLoggingCallback: the optimizer is not a SPAG optimizer; nothing to log",
                NotSPAGOptimizerWarning,
            )
            self._warned = True
        return spag

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        spag = self._spag(optimizer)
        if spag is None or not spag.last_stats:
            return
        stats = spag.stats()
        step = {key: stats[key] for key in spag.last_stats if key in stats}  # the step's own
        self.history.append(step)
        self._since_log.append(step)
        self.projections = int(stats["num_interventions"])

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is None or not self._since_log:
            return
        steps = self._since_log
        added = {
            "spag/safety_loss": math.fsum(s["safety_loss"] for s in steps) / len(steps),
            "spag/projected": sum(bool(s["projected"]) for s in steps) / len(steps),
            "spag/alpha": math.fsum(s["alpha"] for s in steps) / len(steps),
            "spag/projections": self.projections,
        }
        if self.refusals_not_produced:
            added["spag/refusals_not_produced"] = 1.0
        logs.update(added)
        # Trainer.log appends its entry to log_history before calling on_log: complete it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)
        self._since_log = []


def add_spag_logging(trainer: Trainer, optimizer: Any | None = None) -> SPAGLoggingCallback:
    """Attach a :class:`SPAGLoggingCallback` to ``trainer`` *first* among its callbacks (once:
    the one already attached is returned, logging ``optimizer`` if given).

    ``Trainer(callbacks=[...])`` puts user callbacks after the ``report_to`` integrations, which
    would then send each log entry before the SPAG keys are in it; this puts them in first.
    """
    for callback in trainer.callback_handler.callbacks:  # once per trainer: attach_spag twice
        if isinstance(callback, SPAGLoggingCallback):
            callback.optimizer = optimizer if optimizer is not None else callback.optimizer
            return callback
    callback = SPAGLoggingCallback(optimizer)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
