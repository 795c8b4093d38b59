"""Stage 2: the harmful fine-tuning attack (LoRA on the poisoned set), with or without SPAG.

Each method starts from a fresh copy of the aligned weights and the same seed, so the methods differ
only in the optimizer: AdamW for ``sft``; ``SPAGOptimizer(AdamW, safety_closure)`` for the others.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure

from .config import DemoConfig
from .data import Example
from .encoding import collate, encode
from .methods import Method
from .training import train

__all__ = ["AttackOutcome", "run_attack", "LORA_TARGETS"]

#: Every linear layer of a Llama block, as in the paper's LoRA setting.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AttackOutcome:
    model: PreTrainedModel
    projections: int
    seconds: float
    safety_losses: list[float] = field(default_factory=list)  # SPAG's safety loss at every step


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
    """Fine-tune a LoRA copy of ``aligned`` on ``finetune``; with ``safe`` examples, under SPAG."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)  # LoRA's A matrices: identical for every method
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS
    )
    model = get_peft_model(copy.deepcopy(aligned), lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=config.finetune_lr)
    losses: list[float] = []
    if method.selection is not None:
        if not safe:
            raise ValueError(f"{desc}: a SPAG method needs safe examples")
        batches = SafetyBatches(
            encode(tokenizer, safe),
            batch_size=config.safety_batch,
            collate_fn=lambda rows: collate(rows, tokenizer.pad_token_id),
            seed=config.seed,
        )
        optimizer = SPAGOptimizer(
            optimizer, make_safety_closure(model, batches), tau=config.tau, **method.spag
        )

    def record(step: int) -> None:
        losses.append(float(optimizer.last_stats["safety_loss"]))

    train(
        model,
        encode(tokenizer, finetune),
        optimizer,
        epochs=config.finetune_epochs,
        batch_size=config.finetune_batch,
        pad_id=tokenizer.pad_token_id,
        seed=config.seed + 1,
        on_step=record if isinstance(optimizer, SPAGOptimizer) else None,
        desc=desc,
        progress=progress,
    )
    projections = optimizer.num_projections if isinstance(optimizer, SPAGOptimizer) else 0
    return AttackOutcome(model, projections, time.perf_counter() - start, losses)
