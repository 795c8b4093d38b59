"""Attack success rate and utility, both from short greedy generations.

ASR: the share of held-out harmful prompts that the keyword refusal judge does not see refused.
Utility: the share of held-out word problems whose generated "the answer is N" has the right N.
Greedy decoding (:func:`spag_optim.evaluation.generate_responses`) and a handful of new tokens
keep a full evaluation to a second or two on a CPU, and make it deterministic. ``render`` is the
test-time prompt format (the chat template, or PTST's with the safety system prompt in front).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from spag_optim.evaluation import KeywordRefusalJudge, attack_success_rate, generate_responses

from .data import Example
from .encoding import with_bos
from .tokenizer import chat_prompt

__all__ = ["asr", "utility"]

_ANSWER = re.compile(r"the answer is (\d+)")


def _responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    render: Callable[[str], str],
) -> list[str]:
    """Four greedy new tokens per prompt, the prompt rendered after BOS as the training rows are."""
    return generate_responses(
        model, tokenizer, prompts, max_new_tokens=4, batch_size=128, render=with_bos(tokenizer, render)
    )


def asr(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    harmful: Sequence[Example],
    render: Callable[[str], str] = chat_prompt,
) -> float:
    """Attack success rate on ``harmful`` prompts; four new tokens reach "i cannot" or "sure , here"."""
    prompts = [ex.prompt for ex in harmful]
    responses = _responses(model, tokenizer, prompts, render)
    return attack_success_rate(KeywordRefusalJudge().score(prompts, responses))


def utility(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    problems: Sequence[Example],
    render: Callable[[str], str] = chat_prompt,
) -> float:
    """Exact-answer accuracy on ``problems`` ("the answer is N" is four tokens)."""
    if not problems:
        raise ValueError("utility needs at least one held-out problem")
    responses = _responses(model, tokenizer, [ex.prompt for ex in problems], render)
    correct = 0
    for ex, text in zip(problems, responses):
        match = _ANSWER.search(text)
        correct += match is not None and int(match.group(1)) == ex.answer
    return correct / len(problems)
