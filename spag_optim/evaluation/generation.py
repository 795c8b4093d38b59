"""Greedy responses of a causal LM to a list of prompts: the input of every judge and metric here.

The SPARD paper's safety (ASR / HS from a judge's 1-5 harmfulness scores, as in Qi et al. 2024,
"Fine-tuning aligned language models compromises safety") and utility (GSM8K / OpenBookQA accuracy)
are measured on greedy generations; :mod:`.metrics` scores what this function returns.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..safety_pairs import format_prompt

__all__ = ["generate_responses"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS (what training appends to every response), then any other the model's
    generation config stops at (chat models often have two, e.g. end-of-turn and end-of-text)."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config = [] if config is None else [config] if isinstance(config, int) else list(config)
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return ids + [i for i in config if i not in ids]


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    render: Callable[[str], str] | None = None,
    device: torch.device | str | None = None,
) -> list[str]:
    """Greedy responses of ``model`` to ``prompts``: only the new text, one string per prompt.

    Each prompt is rendered to the text the model continues (``render``; by default
    :func:`spag_optim.safety_pairs.format_prompt`, the tokenizer's chat template with the assistant
    header, exactly as the safety pairs are formatted for training), tokenised without adding
    special tokens (the rendered text carries them), and generated in batches of ``batch_size``,
    left-padded so every row continues from its own last token. Decoding is greedy (deterministic),
    stops at the tokenizer's EOS or one of the model's generation config, and the new tokens are
    decoded with ``skip_special_tokens=True``.

    The tokenizer's ``padding_side`` is ``"left"`` and the model in eval mode only for the call:
    both are restored afterwards, also when generation fails. An empty ``prompts`` gives ``[]``,
    like ``tokenizer.batch_decode([])``.

    Responses to real harmful prompts may themselves be harmful: score them with a judge
    (:class:`KeywordRefusalJudge`, :class:`OpenAIJudge`, ...); never print or log them.

    Args:
        model: a causal LM with ``generate`` (a transformers model, also PEFT-wrapped).
        tokenizer: its tokenizer; needs a pad token.
        prompts: the user messages, one string each.
        max_new_tokens: at most this many tokens per response.
        batch_size: prompts per ``generate`` call.
        render: prompt -> the exact text to continue (default: the training format above).
        device: where the inputs go (default: the device of the model's first parameter).

    Raises:
        TypeError: ``prompts`` is a single string, or one of its items (named by index) is not one.
        ValueError: ``max_new_tokens`` or ``batch_size`` is not a positive int, or the tokenizer
            has no pad token to left-pad a batch with.
    """
    max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(prompts, str):
        raise TypeError("prompts is one string; pass a list of prompts, e.g. [prompt]")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {index} is a {type(prompt).__name__}; prompts must be strings")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token to left-pad a batch with; set "
            "tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.eos_token)"
        )
    render = functools.partial(format_prompt, tokenizer) if render is None else render
    device = next(model.parameters()).device if device is None else device
    eos = _eos_ids(model, tokenizer)
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    responses: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render(p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                return_token_type_ids=False,
            ).to(device)
            ids = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos or None,
            )
            new = ids[:, batch["input_ids"].shape[1] :]
            responses += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return responses
