"""Turning prompt/response pairs into causal-LM batches, and prompts into the text generated from.

Training batches carry ``labels`` equal to the input ids on the response and -100 on the prompt
and padding, so the loss (utility, attack, and SPAG's safety loss alike) is on the answer only;
:class:`spag_optim.safety_pairs.PaddingCollator` pads them into batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerFast

from .data import Example
from .tokenizer import chat_prompt

__all__ = ["EncodedExample", "encode", "with_bos"]

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


def with_bos(
    tokenizer: PreTrainedTokenizerFast, render: Callable[[str], str] = chat_prompt
) -> Callable[[str], str]:
    """``render`` with the BOS token in front: the text the model continues at test time,
    ``[BOS] user : prompt assistant :`` (or PTST's system prompt in front), as :func:`encode`'s rows
    begin. :func:`spag_optim.evaluation.generate_responses` tokenises it without adding specials."""
    return lambda prompt: tokenizer.bos_token + render(prompt)
