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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer

from ..config import CALIBRATE, SPAGConfig, is_calibrate
from ..distributed import DEEPSPEED_UNSUPPORTED
from ..factory import make_spag
from ..hyperparameters import hyperparameters_of
from ..safety_data import PRODUCED_NLL_MAX, warn_refusals_not_produced
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
    trainer: Any, *, tau: Any = None, calibration_batches: int = 8, targets: Targets = None
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
    * ``targets`` as for :class:`SPAGTrainerMixin`: by default a calibration that shows the model
      does not say the given refusals is an error naming the fix; ``"model"`` first replaces them
      by the model's own (:meth:`TrainerSafetyClosure.use_model_refusals`: the closure must come
      from :meth:`TrainerSafetyClosure.from_pairs`, whose ``render=`` sets the prompt format);
      ``"given"`` goes on with them and says so in every log entry;
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
    check_targets(targets)
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise NotImplementedError(DEEPSPEED_UNSUPPORTED)
    closure = spag.safety_closure
    if isinstance(closure, TrainerSafetyClosure):
        closure.bind(trainer)
    elif tau == CALIBRATE or targets == "model":
        raise ValueError(
            "tau='calibrate' and targets='model' need a TrainerSafetyClosure; otherwise call "
            "spag_optim.calibrate_tau yourself and pass tau="
        )
    inert = False
    if isinstance(closure, TrainerSafetyClosure):
        tau, inert = safety_targets(
            closure, tau, calibration_batches, targets, "attach_spag(trainer, ..., "
        )
    if tau is not None:
        spag.tau = tau
    if spag.grad_scaler is None:
        spag.grad_scaler = trainer_grad_scaler(trainer)
    callback = add_spag_logging(trainer, spag)
    callback.refusals_not_produced = inert
    return callback


#: ``targets=``: None (the given refusals, checked), ``"given"`` (unchecked) or ``"model"``.
Targets = str | None
TARGETS = (None, "given", "model")


def check_targets(targets: Any) -> None:
    if targets not in TARGETS:
        raise ValueError(
            f"targets={targets!r}: pass 'model' (the model's own refusals), 'given' (the given "
            "ones, even if the model does not say them) or None (the given ones, checked)"
        )


def safety_targets(
    closure: TrainerSafetyClosure,
    tau: Any,
    calibration_batches: int,
    targets: Targets,
    call: str,
) -> tuple[Any, bool]:
    """Apply ``targets=`` to a bound closure and calibrate tau if asked; returns (tau, whether
    the run goes on with refusals the model does not produce). ``call`` starts the fix's code."""
    if targets == "model":
        kept = closure.use_model_refusals()
        logger.info("SPAG: %d safety targets in the model's own words", kept)
    if tau != CALIBRATE:
        return tau, False
    tau = closure.mean_safety_loss(calibration_batches)
    logger.info("SPAG: calibrated tau = %.4f", tau)
    if not closure.refusals_not_produced(tau):
        return tau, False
    if targets is None:
        raise ValueError(
            f"SPAG would barely act: the model's loss on the given refusals is {tau:.3g} nats per "
            f"token (above log 2 = {PRODUCED_NLL_MAX:.3f}), so it does not say them and "
            f"tau='calibrate' would be that high. Fix: {call}targets=\"model\") trains towards "
            "the model's own refusals (one greedy generation over the safe prompts now); check "
            'that render= is the format the model was aligned with; or pass targets="given" '
            "to go on with these (or a number tau, e.g. the paper's 0.2, to teach them)"
        )
    warn_refusals_not_produced(tau)  # and the callback logs spag/refusals_not_produced
    return tau, True


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
        targets: whose refusals SPAG keeps likely. SPARD's tau is the aligned model's loss on
            them, which means something only if the model says them. None (default): the given
            ones; when ``tau="calibrate"`` measures more than log 2 nats per refusal token on
            them (:data:`~spag_optim.safety_data.PRODUCED_NLL_MAX`: the model does not say them,
            e.g. a public pool's wording), construction fails with the fix. ``"model"``: each
            safe prompt is answered greedily by the model at construction and the answers that
            refuse become the targets (:meth:`TrainerSafetyClosure.use_model_refusals`; costs one
            batched generation of up to 64 tokens per safe prompt, and prompts the model does not
            refuse are dropped). ``"given"``: the given ones even so; the run then warns and
            logs ``spag/refusals_not_produced=1`` in every log entry.
        render: prompt -> the exact text before the refusal (special tokens included), for safety
            pairs; default the tokenizer's chat template (user turn and assistant header), else
            ``bos + prompt + "\\n"``. It must be the format the model was aligned and is
            fine-tuned in: the safety loss of a refusal in another context says little about the
            model's own.

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
        targets: Targets = None,
        render: Callable[[str], str] | None = None,
        **kwargs: Any,
    ) -> None:
        config = spag_config(spag)
        check_targets(targets)
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
        closure = trainer_safety_closure(safety, kwargs.get("processing_class"), render)
        super().__init__(*args, **kwargs)
        if getattr(self, "is_deepspeed_enabled", False):
            raise NotImplementedError(DEEPSPEED_UNSUPPORTED)
        closure.bind(self)
        tau, inert = safety_targets(
            closure, config.tau, calibration_batches, targets, f"{type(self).__name__}(..., "
        )
        config = dataclasses.replace(config, tau=tau)
        self.safety_closure = closure
        self._spag_config = config
        self.spag_callback = add_spag_logging(self)  # type: ignore[arg-type]
        self.spag_callback.refusals_not_produced = inert

    def spag_stats(self) -> dict[str, float]:
        """:meth:`SPAGOptimizer.stats() <spag_optim.SPAGOptimizer.stats>` of the trainer's SPAG
        optimizer, through Accelerate's wrapper (``trainer.optimizer`` is an
        ``AcceleratedOptimizer`` once training starts); the optimizer exists after ``train()`` or
        ``create_optimizer()``."""
        spag = find_spag_optimizer(getattr(self, "optimizer", None))
        if spag is None:
            raise RuntimeError(
                "the SPAG optimizer is built by train() (or create_optimizer()); no stats yet"
            )
        return spag.stats()

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
    ``spag=``, ``calibration_batches=``, ``targets=`` and ``render=`` (see
    :class:`SPAGTrainerMixin`)."""


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


def trainer_safety_closure(
    safety: SafetyArg, tokenizer: Any, render: Callable[[str], str] | None
) -> TrainerSafetyClosure:
    """``safety=`` as an unbound :class:`TrainerSafetyClosure` (pairs rendered by ``render``)."""
    if isinstance(safety, TrainerSafetyClosure):
        if render is not None:
            raise ValueError(
                "render= formats safety pairs, and the TrainerSafetyClosure given as safety= is "
                "already tokenised: pass render= to TrainerSafetyClosure.from_pairs instead"
            )
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
    return TrainerSafetyClosure.from_pairs(safety, tokenizer, render=render)
