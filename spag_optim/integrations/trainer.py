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
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .._caller_warning import warn_at_caller
from ..config import CALIBRATE, SPAGConfig, is_calibrate
from ..distributed import DEEPSPEED_UNSUPPORTED
from ..factory import SPAG_CLASSES, make_spag
from ..safety_data import (
    SafetyBatches,
    calibrate_tau,
    measures_refusal_nll,
    model_loss,
    move_to_device,
)
from ..safety_wrapper import check_number
from ..warnings import NotSPAGOptimizerWarning

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


class TrainerSafetyClosure:
    """SPAG's safety closure evaluated with a Trainer's own model, collator and device.

    Args:
        safe_dataset: tokenized safe examples (harmful prompt + refusal), e.g. a list of
            ``{"input_ids": [...]}`` dicts or a ``datasets.Dataset``; batched by the trainer's
            ``data_collator`` unless ``collate_fn`` is given.
        batch_size: safe examples per step and per process.
        seed: reshuffling seed; each process adds its rank so that ranks draw different batches
            (SPAG averages their losses and gradients, see :mod:`spag_optim.distributed`).
        loss_fn: ``(model, batch) -> loss``; defaults to ``model(**batch).loss``.
    """

    def __init__(
        self,
        safe_dataset: Sequence[Any],
        *,
        batch_size: int = 8,
        collate_fn: Callable[[list], Any] | None = None,
        seed: int = 0,
        loss_fn: Callable[[torch.nn.Module, Any], Tensor] | None = None,
    ) -> None:
        # Until bind() hands over the trainer's collator, batching is an error (never reached:
        # __call__ checks the binding first).
        self.batches = SafetyBatches(
            safe_dataset,
            batch_size=batch_size,
            collate_fn=collate_fn or _unbound_collate,
            seed=seed,
        )
        self._own_collate = collate_fn is not None
        self._seed = int(seed)
        self.loss_fn = loss_fn or model_loss
        self.trainer: Any = None

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[Any],
        tokenizer: Any,
        *,
        max_length: int | None = None,
        render: Callable[[str], str] | None = None,
        **kwargs: Any,
    ) -> TrainerSafetyClosure:
        """The closure over (harmful prompt, refusal) pairs or ``dpp-select``'s rows, tokenised and
        padded as :meth:`spag_optim.SafetyBatches.from_pairs` does (``max_length``, ``render``): the
        safety loss is the refusal's negative log-likelihood (the prompt is masked out), whatever the
        trainer's own collator does. ``kwargs`` are the constructor's (``batch_size``, ``seed``,
        ``loss_fn``)."""
        from ..safety_pairs import padded_pairs

        rows, collate_fn = padded_pairs(pairs, tokenizer, max_length, render)
        return cls(rows, collate_fn=collate_fn, **kwargs)

    def bind(self, trainer: Any) -> None:
        """Use ``trainer``'s model, collator, device and rank from now on."""
        self.trainer = trainer
        if not self._own_collate:
            if trainer.data_collator is None:
                raise ValueError(
                    "the trainer has no data_collator to batch the safe examples; pass "
                    "collate_fn= to TrainerSafetyClosure"
                )
            self.batches.collate_fn = trainer.data_collator
        self.batches.seed = self._seed + int(trainer.args.process_index)

    @property
    def model(self) -> torch.nn.Module | None:
        """The model the closure runs: the trainer's wrapped one (what ``distributed="auto"``
        inspects, so a DDP-wrapped model is recognised)."""
        if self.trainer is None:
            return None
        return (
            self.trainer.model_wrapped
            if self.trainer.model_wrapped is not None
            else self.trainer.model
        )

    def __call__(self) -> Tensor:
        if self.trainer is None:
            raise RuntimeError(
                "TrainerSafetyClosure is not bound to a trainer: call "
                "spag_optim.integrations.trainer.attach_spag(trainer) before trainer.train()"
            )
        batch = move_to_device(next(self.batches), self.trainer.args.device)
        with self.trainer.compute_loss_context_manager():
            return self.loss_fn(self.model, batch)

    def calibrate_tau(self, num_batches: int = 8) -> float:
        """:func:`spag_optim.calibrate_tau` with the trainer's model, device and autocast, from the
        closure's current position, which it leaves unchanged. Under torch.distributed the ranks'
        values (each from its own safe batches) are averaged: every rank needs the same tau to take
        the same projection decisions.

        The loss is measured in the precision training will measure it in: before training the
        model is not yet wrapped in Accelerate's autocast, so the trainer's ``bf16``/``fp16``
        autocast is entered here (with ``bf16=True`` a float32 measurement differs from the
        losses SPAG compares with tau by bf16 rounding)."""
        if self.trainer is None:
            raise RuntimeError("bind the closure to a trainer first (attach_spag does)")

        def loss_fn(model: torch.nn.Module, batch: Any) -> Tensor:
            with self.trainer.accelerator.autocast(), self.trainer.compute_loss_context_manager():
                return self.loss_fn(model, move_to_device(batch, self.trainer.args.device))

        tau = calibrate_tau(
            self.trainer.model,
            self.batches,
            num_batches,
            loss_fn,
            loss_is_nll=measures_refusal_nll(self.batches, self.loss_fn),
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.tensor([tau], dtype=torch.float64, device=self.trainer.args.device)
            dist.all_reduce(total)
            tau = float(total) / dist.get_world_size()
        return tau

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict()}

    def check_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict) or "batches" not in state:
            raise ValueError(
                "the safety closure's state lacks 'batches' (the safe batches' position)"
            )
        self.batches.check_state_dict(state["batches"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position. The Trainer saves rank 0's optimizer state for every rank; each
        rank keeps its own seed (positions agree across ranks: all draw equal-sized batches from
        equally long data)."""
        self.check_state_dict(state)
        self.batches.load_state_dict(state["batches"])


def _unbound_collate(rows: list) -> Any:
    raise RuntimeError("TrainerSafetyClosure is not bound to a trainer: call attach_spag(trainer)")


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


# -- logging ------------------------------------------------------------------------------------
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
        logs.update(added)
        # Trainer.log appends its entry to log_history before calling on_log: complete it too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)
        self._since_log = []


def add_spag_logging(trainer: Trainer, optimizer: Any | None = None) -> SPAGLoggingCallback:
    """Attach a :class:`SPAGLoggingCallback` to ``trainer`` *first* among its callbacks.

    ``Trainer(callbacks=[...])`` puts user callbacks after the ``report_to`` integrations, which
    would then send each log entry before the SPAG keys are in it; this puts them in first.
    """
    callback = SPAGLoggingCallback(optimizer)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


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
        self.spag_config = config
        self.spag_callback = add_spag_logging(self)  # type: ignore[arg-type]

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's own optimizer (``super().create_optimizer``) wrapped in SPAG, once."""
        optimizer = super().create_optimizer(model)  # type: ignore[misc]
        if find_spag_optimizer(optimizer) is None:
            optimizer = make_spag(
                optimizer,
                self.safety_closure,
                **self.spag_config.to_dict(),
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
