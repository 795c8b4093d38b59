"""Turning prompt/response pairs into causal-LM batches, and prompts into generation inputs.

Training batches carry ``labels`` equal to the input ids on the response and -100 on the prompt
and padding, so the loss (utility, attack, and SPAG's safety loss alike) is on the answer only;
:class:`spag_optim.safety_pairs.PaddingCollator` pads them into batches.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerFast

from .data import Example
from .tokenizer import chat_prompt

__all__ = ["EncodedExample", "encode", "prompt_batch"]

EncodedExample = dict[str, list[int]]


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example]) -> list[EncodedExample]:
    """``[BOS] user : prompt assistant : response [EOS]`` with the prompt part masked out."""
    out = []
    for ex in examples:
        prompt = [tokenizer.bos_token_id] + _ids(tokenizer, chat_prompt(ex.prompt))
        response = _ids(tokenizer, ex.response) + [tokenizer.eos_token_id]
        out.append({"input_ids": prompt + response, "labels": [-100] * len(prompt) + response})
    return out


def prompt_batch(
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    render: Callable[[str], str] = chat_prompt,
) -> dict[str, torch.Tensor]:
    """Left-padded ``[BOS] user : prompt assistant :`` rows (or whatever ``render`` makes of each
    prompt, e.g. PTST's system prompt in front), ready for greedy generation."""
    rows = [[tokenizer.bos_token_id] + _ids(tokenizer, render(p)) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}
