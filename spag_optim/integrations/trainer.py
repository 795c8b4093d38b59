"""SPAG inside a Hugging Face ``Trainer`` (or TRL's ``SFTTrainer``) in three lines.

The Trainer builds the pieces SPAG's safety closure needs only after the optimizer exists: the
wrapped model (``trainer.model_wrapped``: DDP under ``torchrun``, Accelerate's autocast-patched model
under ``bf16=True``), the data collator, the device, the rank. So the closure is created unbound and
bound to the trainer afterwards::

    safety = TrainerSafetyClosure(safe_examples, batch_size=8)          # tokenized safe examples
    optimizer = SPAGOptimizer(torch.optim.AdamW(model.parameters(), lr=2e-5), safety, tau=tau)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator,
                      optimizers=(optimizer, None))                     # the Trainer's scheduler
    attach_spag(trainer)                                                # binds, logs spag/* stats
    trainer.train()

The Trainer then calls ``optimizer.step()`` once per optimizer step (after the last micro-batch of
gradient accumulation and after ``max_grad_norm`` clipping of the utility gradient), so SPAG projects
once per step; the safety gradient itself is not clipped (the trust region bounds the projection).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from ..distributed import DEEPSPEED_UNSUPPORTED
from ..safety_data import SafetyBatches, _model_loss, move_to_device
from .hf import SPAGLoggingCallback, add_spag_logging, find_spag_optimizer

__all__ = ["TrainerSafetyClosure", "attach_spag"]

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
        collate_fn: Optional[Callable[[list], Any]] = None,
        seed: int = 0,
        loss_fn: Optional[Callable[[torch.nn.Module, Any], Tensor]] = None,
    ) -> None:
        self.batches = SafetyBatches(safe_dataset, batch_size=batch_size, collate_fn=collate_fn, seed=seed)
        self._own_collate = collate_fn is not None
        self._seed = int(seed)
        self.loss_fn = loss_fn or _model_loss
        self.trainer: Any = None

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
    def model(self) -> Optional[torch.nn.Module]:
        """The model the closure runs: the trainer's wrapped one (what ``distributed="auto"``
        inspects, so a DDP-wrapped model is recognised)."""
        if self.trainer is None:
            return None
        return self.trainer.model_wrapped if self.trainer.model_wrapped is not None else self.trainer.model

    def __call__(self) -> Tensor:
        if self.trainer is None:
            raise RuntimeError(
                "TrainerSafetyClosure is not bound to a trainer: call "
                "spag_optim.integrations.trainer.attach_spag(trainer) before trainer.train()"
            )
        batch = move_to_device(next(self.batches), self.trainer.args.device)
        with self.trainer.compute_loss_context_manager():
            return self.loss_fn(self.model, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position. The Trainer saves rank 0's optimizer state for every rank, so the
        seed is re-derived from this process's rank (positions agree across ranks anyway: all
        ranks draw equal-sized batches from equally long data)."""
        if "batches" in state:
            self.batches.load_state_dict(state["batches"])
        self.batches.seed = self._seed + (int(self.trainer.args.process_index) if self.trainer else 0)


def attach_spag(trainer: Any) -> SPAGLoggingCallback:
    """Make ``trainer`` train with the SPAGOptimizer it was given and log SPAG's stats.

    * binds a :class:`TrainerSafetyClosure` to the trainer;
    * under ``fp16=True`` hands the trainer's ``GradScaler`` to SPAG (``grad_scaler=``), so the
      safety backward is scaled like the utility backward;
    * adds a :class:`~spag_optim.integrations.hf.SPAGLoggingCallback`: ``spag/safety_loss``,
      ``spag/projected``, ``spag/alpha`` and ``spag/projections`` in every log entry;
    * refuses DeepSpeed, which SPAG does not support.

    Returns the callback (its ``history`` holds every step's stats).
    """
    spag = find_spag_optimizer(trainer.optimizer)
    if spag is None:
        raise ValueError(
            "the trainer has no SPAGOptimizer: pass optimizers=(SPAGOptimizer(...), None) to the "
            "Trainer before calling attach_spag"
        )
    if getattr(trainer, "is_deepspeed_enabled", False):
        raise NotImplementedError(DEEPSPEED_UNSUPPORTED)
    if isinstance(spag.safety_closure, TrainerSafetyClosure):
        spag.safety_closure.bind(trainer)
    scaler = getattr(trainer.accelerator, "scaler", None)
    if scaler is not None and spag.grad_scaler is None:
        spag.grad_scaler = scaler
        logger.info("SPAG: using the trainer's GradScaler for the safety backward")
    return add_spag_logging(trainer, spag)
