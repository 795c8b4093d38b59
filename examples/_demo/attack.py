"""Stage 2: the harmful fine-tuning attack (LoRA on the poisoned set), with or without a defense.

Each method starts from a fresh copy of the aligned weights and the same seed, so the methods differ
only in what ``Method`` says: the optimizer (AdamW for ``sft``; ``method.wrapper(AdamW,
safety_closure, ...)``, e.g. ``SPAGOptimizer``, for the others), for SafeInstr the selected safe
rows mixed into the data, and for GuardSpace its adapters (built from the selected rows) in place
of LoRA.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lora_targets import DEFAULT_LORA_TARGETS
from spag_optim import SafetyBatches, make_safety_closure
from spag_optim.baselines import safeinstr_mix
from spag_optim.guardspace import adapter_parameters
from spag_optim.safety_pairs import PaddingCollator

from .config import DemoConfig
from .data import Example
from .encoding import encode
from .guardspace import guardspace_model
from .methods import Method
from .optimizers import interventions
from .training import train

__all__ = ["AttackOutcome", "lora_copy", "run_attack"]


@dataclass
class AttackOutcome:
    model: PreTrainedModel
    projections: int
    seconds: float
    safety_losses: list[float] = field(default_factory=list)  # the wrapper's safety loss per step


def lora_copy(
    aligned: PreTrainedModel, config: DemoConfig
) -> tuple[PreTrainedModel, list[torch.nn.Parameter]]:
    """A LoRA copy of ``aligned`` (the demo's rank and alpha on ``DEFAULT_LORA_TARGETS``, no
    dropout) and its trainable parameters; ``aligned`` itself is left untouched."""
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(DEFAULT_LORA_TARGETS),
    )
    model = get_peft_model(copy.deepcopy(aligned), lora)
    return model, [p for p in model.parameters() if p.requires_grad]


def run_attack(
    aligned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    finetune: Sequence[Example],
    method: Method,
    safe: Sequence[Example] | None,
    config: DemoConfig,
    *,
    desc: str,
    progress: bool = True,
) -> AttackOutcome:
    """Fine-tune a LoRA copy of ``aligned`` on ``finetune`` as ``method`` says, with the ``safe``
    examples it selected (None when it selects none)."""
    start = time.perf_counter()
    if method.selection is not None and not safe:
        raise ValueError(f"{desc}: this method selects safe examples, but none were given")
    torch.manual_seed(config.seed)  # LoRA's A matrices: identical for every method
    if method.adapter == "guardspace":
        model = guardspace_model(aligned, tokenizer, safe, config, list(DEFAULT_LORA_TARGETS))
        trainable = adapter_parameters(model)
    else:
        model, trainable = lora_copy(aligned, config)
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=config.finetune_lr)
    losses: list[float] = []
    rows = list(finetune)
    if method.selection is not None:
        if method.mix_safe:
            # SafeInstr: every selected row joins the data (fraction = k / n gives exactly k).
            rows = safeinstr_mix(rows, list(safe), fraction=len(safe) / len(rows), seed=config.seed)
    if method.wrapper is not None:
        batches = SafetyBatches(
            encode(tokenizer, safe),
            batch_size=config.safety_batch,
            collate_fn=PaddingCollator(tokenizer.pad_token_id),
            seed=config.seed,
        )
        optimizer = method.wrapper(
            optimizer, make_safety_closure(model, batches), config, **method.options
        )

    def record(step: int) -> None:
        losses.append(optimizer.stats()["safety_loss"])

    train(
        model,
        encode(tokenizer, rows),
        optimizer,
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch,
        pad_id=tokenizer.pad_token_id,
        seed=config.seed + 1,
        on_step=record if method.wrapper is not None else None,
        desc=desc,
        progress=progress,
    )
    return AttackOutcome(model, interventions(optimizer), time.perf_counter() - start, losses)
