"""SPAG's safety closure evaluated with a Hugging Face ``Trainer``'s own model, collator and device.

The Trainer builds what the closure needs only after the optimizer exists: the wrapped model
(``trainer.model_wrapped``: DDP under ``torchrun``, Accelerate's autocast-patched model under
``bf16=True``), the data collator, the device, the rank. So :class:`TrainerSafetyClosure` is
created unbound and bound to the trainer afterwards (by
:func:`~spag_optim.integrations.trainer.attach_spag` or
:class:`~spag_optim.integrations.trainer.SPAGTrainer`). Its loss is SPARD's safety loss (ICML 2026,
Algorithm 1) on the next safe batch. Re-exported by :mod:`spag_optim.integrations.trainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..safety_data import (
    PRODUCED_NLL_MAX,
    SafetyBatches,
    calibrate_tau,
    check_batches_fit_model,
    measures_refusal_nll,
    model_loss,
    move_to_device,
    warn_refusals_not_produced,
)

__all__ = ["TrainerSafetyClosure"]


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
        self._pairs: _PairsSource | None = None  # what from_pairs encoded, for use_model_refusals

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
        ``loss_fn``). The prompts are kept for :meth:`use_model_refusals`."""
        from ..safety_pairs import padded_pairs, pair_list, pair_prompts

        pairs = pair_list(pairs)
        rows, collate_fn = padded_pairs(pairs, tokenizer, max_length, render)
        closure = cls(rows, collate_fn=collate_fn, **kwargs)
        closure._pairs = _PairsSource(pair_prompts(pairs), tokenizer, max_length, render)
        return closure

    def use_model_refusals(self) -> int:
        """Replace the refusals by the bound trainer's model's own, before training: each safe
        prompt is answered greedily (:func:`~spag_optim.model_refusals.refusals_from_model`, at
        most 64 new tokens, formatted as the pairs were) and kept where it refuses, so the model
        produces its targets by construction and the calibrated tau is the aligned model's loss on
        what it says (SPARD, Algorithm 1). Costs one batched generation over the safe prompts.
        Only for a closure made by :meth:`from_pairs`; returns how many pairs are kept."""
        from ..model_refusals import refusals_from_model
        from ..safety_pairs import padded_pairs

        if self.trainer is None:
            raise RuntimeError("bind the closure to a trainer first (attach_spag does)")
        if self._pairs is None:
            raise ValueError(
                "targets='model' needs the safety prompts: build the closure with "
                "TrainerSafetyClosure.from_pairs(pairs, tokenizer), or pass safety= pairs"
            )
        source = self._pairs
        pairs = refusals_from_model(
            self.trainer.model,
            source.tokenizer,
            source.prompts,
            render=source.render,
            device=self.trainer.args.device,
        )
        rows, _ = padded_pairs(pairs, source.tokenizer, source.max_length, source.render)
        batches = self.batches
        self.batches = SafetyBatches(
            rows, batch_size=batches.batch_size, collate_fn=batches.collate_fn, seed=batches.seed
        )
        check_batches_fit_model(self.trainer.model, self.batches)
        return len(rows)

    def bind(self, trainer: Any) -> None:
        """Use ``trainer``'s model, collator, device and rank from now on; refuses (before
        anything changes) safe rows longer than the model's ``max_position_embeddings``."""
        check_batches_fit_model(getattr(trainer, "model", None), self.batches)
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
        the same projection decisions. Warns as ``calibrate_tau`` does when the (averaged) loss
        shows the model does not produce the refusals (:meth:`refusals_not_produced`)."""
        tau = self.mean_safety_loss(num_batches)
        if self.refusals_not_produced(tau):
            warn_refusals_not_produced(tau)
        return tau

    def refusals_not_produced(self, loss: float) -> bool:
        """Whether ``loss`` (from :meth:`mean_safety_loss`) is a refusal NLL above
        :data:`~spag_optim.safety_data.PRODUCED_NLL_MAX`: the model does not say these refusals,
        and a tau calibrated on them leaves SPAG nearly inert."""
        return measures_refusal_nll(self.batches, self.loss_fn) and loss > PRODUCED_NLL_MAX

    def mean_safety_loss(self, num_batches: int = 8) -> float:
        """:meth:`calibrate_tau` without its warning: the mean over ``num_batches`` safe batches,
        averaged over the ranks.

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
            loss_is_nll=False,  # checked by the caller, on the mean over ranks
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


@dataclasses.dataclass(frozen=True)
class _PairsSource:
    """How :meth:`TrainerSafetyClosure.from_pairs` encoded its pairs."""

    prompts: list[str]
    tokenizer: Any
    max_length: int | None
    render: Callable[[str], str] | None


def _unbound_collate(rows: list) -> Any:
    raise RuntimeError("TrainerSafetyClosure is not bound to a trainer: call attach_spag(trainer)")
