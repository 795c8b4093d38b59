"""SPAG inside a Hugging Face ``Trainer`` (or TRL's ``SFTTrainer``) in one line.

:class:`SPAGTrainer` is a ``Trainer`` that defends itself: it wraps the optimizer the Trainer
creates from its ``TrainingArguments`` (``optim``, ``learning_rate``, ``weight_decay`` and the
Trainer's no-decay parameter groups) in a :class:`~spag_optim.SPAGOptimizer` (SPARD, ICML 2026,
Algorithm 1) and logs SPAG's statistics::

    trainer = SPAGTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                          data_collator=collator, safety=safe_pairs, spag={"tau": "calibrate"})
    trainer.train()

:class:`SPAGTrainerMixin` gives the same to any other ``Trainer`` subclass
(``class SPAGSFTTrainer(SPAGTrainerMixin, trl.SFTTrainer): pass``).

For an optimizer built by hand there are the pieces the mixin is made of. The Trainer builds what
SPAG's safety closure needs only after the optimizer exists: the wrapped model
(``trainer.model_wrapped``: DDP under ``torchrun``, Accelerate's autocast-patched model under
``bf16=True``), the data collator, the device, the rank. So the closure is created unbound and
bound to the trainer afterwards::

    safety = TrainerSafetyClosure.from_pairs(safe_pairs, tokenizer, batch_size=8)  # (prompt, refusal)
    optimizer = SPAGOptimizer(torch.optim.AdamW(model.parameters(), lr=2e-5), safety)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator,
                      optimizers=(optimizer, None))                     # the Trainer's scheduler
    attach_spag(trainer, tau="calibrate")                 # binds, sets tau, logs spag/* stats
    trainer.train()

The Trainer then calls ``optimizer.step()`` once per optimizer step (after the last micro-batch of
gradient accumulation and after ``max_grad_norm`` clipping of the utility gradient), so SPAG projects
once per step; the safety gradient itself is not clipped (the trust region bounds the projection).

What the Trainer cannot know is whether the safety projection is doing anything:
:class:`SPAGLoggingCallback` (added by :class:`SPAGTrainer` and :func:`attach_spag`, or by
:func:`add_spag_logging` for a SPAG optimizer with any other closure) reads
``SPAGOptimizer.stats()`` after every optimizer step and adds a summary of the steps since the
previous log to each log entry, so ``report_to`` integrations, the progress bar and
``trainer.state.log_history`` show whether the model keeps drifting out of the safe region.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer

from ..config import CALIBRATE, SPAGConfig, is_calibrate
from ..distributed import DEEPSPEED_UNSUPPORTED
from ..factory import make_spag
from ..hyperparameters import hyperparameters_of
from ..safety_wrapper import check_number
from .trainer_closure import TrainerSafetyClosure
from .trainer_logging import SPAGLoggingCallback, add_spag_logging, find_spag_optimizer

__all__ = [
    "SPAGTrainer",
    "SPAGTrainerMixin",
    "TrainerSafetyClosure",
    "attach_spag",
    "SPAGLoggingCallback",
    "add_spag_logging",
    "find_spag_optimizer",
]

logger = logging.getLogger(__name__)


def attach_spag(
    trainer: Any, *, tau: Any = None, calibration_batches: int = 8
) -> SPAGLoggingCallback:
    """Make ``trainer`` train with the SPAGOptimizer it was given and log SPAG's stats.

    * binds a :class:`TrainerSafetyClosure` to the trainer;
    * ``tau="calibrate"`` sets SPAG's tau to the model's mean safety loss over
      ``calibration_batches`` safe batches now, before training (the paper's choice: the aligned
      model's loss), without moving the safe batches; a number sets tau to it; None keeps the
      optimizer's. A checkpoint the Trainer resumes from restores its own tau (see
      :class:`~spag_optim.SPAGOptimizer`'s state dict);
    * under ``fp16=True`` hands the trainer's ``GradScaler`` to SPAG (``grad_scaler=``), so the
      safety backward is scaled like the utility backward;
    * adds a :class:`SPAGLoggingCallback`: ``spag/safety_loss``,
      ``spag/projected``, ``spag/alpha`` and ``spag/projections`` in every log entry;
    * refuses DeepSpeed, which SPAG does not support.

    Returns the callback (its ``history`` holds every step's stats).
    """
    spag = find_spag_optimizer(trainer.optimizer)
    if spag is None:
        raise ValueError(
            f"the trainer's optimizer is a {type(trainer.optimizer).__name__}, not a SPAGOptimizer: "
            "pass optimizers=(SPAGOptimizer(...), None) to the Trainer before calling attach_spag "
            "(a baseline's TrainerSafetyClosure is bound with closure.bind(trainer))"
        )
    if isinstance(tau, str):
        if not is_calibrate(tau):
            raise ValueError(f"tau={tau!r}: pass a number, 'calibrate' or None")
        tau = CALIBRATE
    elif tau is not None:
        tau = check_number("tau", tau, minimum=0.0)
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise NotImplementedError(DEEPSPEED_UNSUPPORTED)
    closure = spag.safety_closure
    if isinstance(closure, TrainerSafetyClosure):
        closure.bind(trainer)
    if tau == CALIBRATE:
        if not isinstance(closure, TrainerSafetyClosure):
            raise ValueError(
                "tau='calibrate' needs a TrainerSafetyClosure; otherwise call "
                "spag_optim.calibrate_tau yourself and pass tau="
            )
        tau = closure.calibrate_tau(calibration_batches)
        logger.info("SPAG: calibrated tau = %.4f", tau)
    if tau is not None:
        spag.tau = tau
    if spag.grad_scaler is None:
        spag.grad_scaler = trainer_grad_scaler(trainer)
    return add_spag_logging(trainer, spag)


def trainer_grad_scaler(trainer: Any) -> Any | None:
    """The trainer's ``GradScaler`` (``fp16=True``), which SPAG must use for its safety backward
    so that it is scaled like the utility backward; None without one."""
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None:
        logger.info("SPAG: using the trainer's GradScaler for the safety backward")
    return scaler


# -- the Trainer that builds SPAG itself --------------------------------------------------------
SafetyArg = Sequence[Any] | TrainerSafetyClosure
SPAGArg = Mapping[str, Any] | SPAGConfig | None


class SPAGTrainerMixin:
    """Makes a ``transformers.Trainer`` subclass train with SPAG (SPARD, ICML 2026, Algorithm 1).

    ``class MyTrainer(SPAGTrainerMixin, SomeTrainer)`` takes ``SomeTrainer``'s arguments plus:

    Args:
        safety: the safe data: (harmful prompt, refusal) pairs, ``{"prompt", "safe"}`` rows as
            ``dpp-select`` writes them (other fields ignored, but a ``"response"`` beside
            ``"safe"`` is refused as ambiguous), ``{"prompt", "response"}`` rows,
            or a :class:`TrainerSafetyClosure` (for its batch size, ``max_length``, seed or loss).
            Pairs and rows are tokenised with ``processing_class`` as
            :meth:`TrainerSafetyClosure.from_pairs` does (loss on the refusal only), 8 per batch.
        spag: :class:`~spag_optim.SPAGOptimizer`'s keyword arguments, as a dict or a
            :class:`~spag_optim.SPAGConfig`. ``tau="calibrate"`` sets tau to the model's mean
            safety loss over ``calibration_batches`` safe batches when the trainer is constructed
            (the aligned model, before any checkpoint is loaded), as :func:`attach_spag` does.
        calibration_batches: safe batches that ``tau="calibrate"`` averages over.

    :meth:`create_optimizer` wraps the optimizer the Trainer creates (from ``args.optim``,
    ``learning_rate``, ``weight_decay``, with its no-decay groups; or the one given in
    ``optimizers=``) in a ``SPAGOptimizer`` with the Trainer's ``GradScaler`` under ``fp16=True``;
    a :class:`SPAGLoggingCallback` (``spag_callback``) logs ``spag/*`` keys. ``spag_config`` is
    the config in use (tau calibrated): save it with the run. DeepSpeed is refused.
    """

    def __init__(
        self,
        *args: Any,
        safety: SafetyArg,
        spag: SPAGArg = None,
        calibration_batches: int = 8,
        **kwargs: Any,
    ) -> None:
        config = spag_config(spag)
        if (
            isinstance(calibration_batches, bool)
            or not isinstance(calibration_batches, int)
            or calibration_batches < 1
        ):
            raise ValueError(
                f"calibration_batches must be an int >= 1, got {calibration_batches!r}"
            )
        given = (kwargs.get("optimizers") or (None, None))[0]
        if find_spag_optimizer(given) is not None:
            raise ValueError(
                f"{type(self).__name__} builds the SPAGOptimizer itself: pass safety= and spag= "
                "and no SPAGOptimizer in optimizers= (or use Trainer with attach_spag)"
            )
        closure = trainer_safety_closure(safety, kwargs.get("processing_class"))
        super().__init__(*args, **kwargs)
        if getattr(self, "is_deepspeed_enabled", False):
            raise NotImplementedError(DEEPSPEED_UNSUPPORTED)
        closure.bind(self)
        if config.tau == CALIBRATE:
            tau = closure.calibrate_tau(calibration_batches)
            logger.info("SPAG: calibrated tau = %.4f", tau)
            config = dataclasses.replace(config, tau=tau)
        self.safety_closure = closure
        self._spag_config = config
        self.spag_callback = add_spag_logging(self)  # type: ignore[arg-type]

    @property
    def spag_config(self) -> SPAGConfig:
        """The config in use: the SPAG optimizer's own values once it exists (after a resume,
        the checkpoint's), before that the constructor's with tau calibrated."""
        spag = find_spag_optimizer(getattr(self, "optimizer", None))
        if spag is None:
            return self._spag_config
        return SPAGConfig(**hyperparameters_of(spag), distributed=spag.distributed)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's own optimizer (``super().create_optimizer``) wrapped in SPAG, once."""
        optimizer = super().create_optimizer(model)  # type: ignore[misc]
        if find_spag_optimizer(optimizer) is None:
            optimizer = make_spag(
                optimizer,
                self.safety_closure,
                **self._spag_config.to_dict(),
                grad_scaler=trainer_grad_scaler(self),
            )
            self.optimizer = optimizer
        return optimizer


class SPAGTrainer(SPAGTrainerMixin, Trainer):
    """A ``transformers.Trainer`` that trains with SPAG: ``Trainer``'s arguments plus ``safety=``,
    ``spag=`` and ``calibration_batches=`` (see :class:`SPAGTrainerMixin`)."""


def spag_config(spag: SPAGArg) -> SPAGConfig:
    """``spag=`` as a checked :class:`~spag_optim.SPAGConfig` (None: the defaults)."""
    if spag is None:
        return SPAGConfig()
    if isinstance(spag, SPAGConfig):
        return dataclasses.replace(spag)  # checked again: fields may have been set since
    if isinstance(spag, Mapping):
        return SPAGConfig.from_dict(spag)
    raise TypeError(
        f"spag= takes SPAGOptimizer's keyword arguments as a dict or a SPAGConfig, "
        f"got {type(spag).__name__}"
    )


def trainer_safety_closure(safety: SafetyArg, tokenizer: Any) -> TrainerSafetyClosure:
    """``safety=`` as an unbound :class:`TrainerSafetyClosure`."""
    if isinstance(safety, TrainerSafetyClosure):
        return safety
    if (
        isinstance(safety, (str, bytes, Mapping))
        or not hasattr(safety, "__len__")
        or not hasattr(safety, "__getitem__")
    ):
        raise TypeError(
            f"safety= is a {type(safety).__name__}: give a list of (harmful prompt, refusal) pairs, "
            "of {'prompt', 'safe'} rows (dpp-select's output), or a TrainerSafetyClosure (a closure "
            "over your own model goes into SPAGOptimizer, with Trainer and attach_spag)"
        )
    if tokenizer is None:
        raise ValueError(
            "safety= pairs are tokenised with the trainer's tokenizer: pass "
            "processing_class=tokenizer, or a TrainerSafetyClosure as safety="
        )
    return TrainerSafetyClosure.from_pairs(safety, tokenizer)
