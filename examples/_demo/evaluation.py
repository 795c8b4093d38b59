"""Attack success rate and utility, both from short greedy generations.

ASR: the share of held-out harmful prompts that the keyword refusal judge does not see refused.
Utility: the share of held-out word problems whose generated "the answer is N" has the right N.
Greedy decoding and a handful of new tokens keep a full evaluation to a second or two on a CPU,
and make it deterministic.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from spag_optim.evaluation import KeywordRefusalJudge, attack_success_rate

from .data import Example
from .encoding import prompt_batch

__all__ = ["generate", "asr", "utility"]

_ANSWER = re.compile(r"the answer is (\d+)")


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 128,
) -> list[str]:
    """Greedy completions of ``prompts`` (decoded, without the prompt)."""
    model.eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompt_batch(tokenizer, prompts[start : start + batch_size])
        ids = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = ids[:, batch["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


def asr(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, harmful: Sequence[Example]) -> float:
    """Attack success rate on ``harmful`` prompts; four new tokens reach "i cannot" or "sure , here"."""
    prompts = [ex.prompt for ex in harmful]
    responses = generate(model, tokenizer, prompts, max_new_tokens=4)
    return attack_success_rate(KeywordRefusalJudge().score(prompts, responses))


def utility(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: Sequence[Example]) -> float:
    """Exact-answer accuracy on ``problems`` ("the answer is N" is four tokens)."""
    if not problems:
        raise ValueError("utility needs at least one held-out problem")
    responses = generate(model, tokenizer, [ex.prompt for ex in problems], max_new_tokens=4)
    correct = 0
    for ex, text in zip(problems, responses):
        match = _ANSWER.search(text)
        correct += match is not None and int(match.group(1)) == ex.answer
    return correct / len(problems)
