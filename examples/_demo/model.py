"""The tiny Llama the demo aligns and then attacks.

Two layers of width 64 are enough to learn the demo's three behaviours (arithmetic, helpful how-to
answers, refusals) from scratch in well under a minute on a laptop CPU, and the architecture is the
real ``LlamaForCausalLM``: the same code path users run on a real model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["ModelSize", "build_model"]


@dataclass(frozen=True)
class ModelSize:
    hidden: int  # the demo's width and depth are its config's (``DemoConfig.hidden``, ``.layers``)
    layers: int
    heads: int = 4
    max_positions: int = 64


def build_model(tokenizer: PreTrainedTokenizerFast, size: ModelSize, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model (weights drawn from ``seed``) sized for ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=2 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
