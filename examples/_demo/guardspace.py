"""GuardSpace in the demo (arXiv 2510.14301; ``spag_optim.guardspace``): the aligned model's Linear
layers become safety-subspace adapters on a null space, in place of LoRA.

Data (the same safe rows every other defense gets: the DPP selection, 3% of the fine-tuning set):
the paper calibrates both covariances on harmful prompts (AdvBench); here the safety covariance and
the null-space covariance both come from the selected safe examples, *prompt and refusal*, so the
protected span covers the tokens where the model produces its refusal, not just the request.

Budget: the adapter rank is the demo's LoRA rank on the same seven projections, trained by the same
AdamW, learning rate, epochs and batches; only the adapter differs.

Threshold: a dozen examples give a few hundred tokens, more than the tiny model's width (64/128),
so the paper's rule (eigenvalues <= 1e-6 lambda_max) finds no null space and every adapter would be
frozen. The demo uses the library's documented alternative with the value its warning suggests,
:data:`NULL_ENERGY`: protect the leading directions carrying 99% of the safe data's spectral energy
and let the adapters use the rest (on the seed-0 aligned model that leaves 38-54 of 64 input
directions, and 103-106 of 128, to the adapters). Chosen before seeing any result, not tuned.

``guardspace_spard``: SPAG's closure runs on the same safe rows whose layer outputs GuardSpace holds
fixed (up to the 1% of energy left to the adapters), so its safety loss barely moves and SPAG
seldom, if ever, projects (0 projections on seeds 0, 1 and 2). The two compose usefully when SPAG's
safe data reach beyond the null-space data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from spag_optim.guardspace import apply_guardspace
from spag_optim.safety_pairs import PaddingCollator

from .config import DemoConfig
from .data import Example
from .encoding import encode

__all__ = ["guardspace_model", "NULL_ENERGY"]

#: Share of the null data's spectral energy whose directions the adapters may not touch.
NULL_ENERGY = 0.99


def guardspace_model(
    aligned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    safe: Sequence[Example],
    config: DemoConfig,
    targets: Sequence[str],
    null_energy: float = NULL_ENERGY,
) -> PreTrainedModel:
    """A copy of ``aligned`` with GuardSpace adapters of rank ``config.lora_rank`` on ``targets``."""
    rows = encode(tokenizer, safe)
    batches = []
    for start in range(0, len(rows), config.safety_batch):
        batch = PaddingCollator(tokenizer.pad_token_id)(rows[start : start + config.safety_batch])
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    model = copy.deepcopy(aligned)
    with torch.no_grad():
        apply_guardspace(
            model,
            batches,
            batches,
            rank=config.lora_rank,
            target_modules=targets,
            null_energy=null_energy,
            progress=False,
        )
    return model
