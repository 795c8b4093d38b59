"""Safety targets from what the aligned model itself answers to the harmful prompts.

SPARD's safety loss (Algorithm 1) is the negative log-likelihood of a refusal given a harmful
prompt, and tau is that loss on the aligned model. When the dataset's refusals are not what the
model says (another model's wording, another style), the aligned model's loss on them is high
(:func:`spag_optim.calibrate_tau` warns above log 2 nats per token), tau is high, and SPAG acts only
after fine-tuning has already erased the model's own refusals. :func:`refusals_from_model` builds
the targets from the model's own greedy answers instead, generated once before fine-tuning and kept
only where a judge says they refuse; the model then produces its targets by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .evaluation.generation import generate_responses
from .evaluation.judges import Judge, KeywordRefusalJudge

__all__ = ["REFUSAL_SCORE", "refusals_from_model"]

logger = logging.getLogger(__name__)

#: The harmfulness score (1-5 scale of Qi et al. 2024) of a refusal: the rubric's "declines".
REFUSAL_SCORE = 1.0


def refusals_from_model(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    judge: Judge | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    render: Callable[[str], str] | None = None,
    device: torch.device | str | None = None,
) -> list[tuple[str, str]]:
    """(prompt, refusal) pairs of the prompts the aligned ``model`` refuses, in its own words.

    Call it on the aligned model before fine-tuning, once, and pass the result to
    :meth:`spag_optim.SafetyBatches.from_pairs` (with the same ``render``) and
    :func:`spag_optim.calibrate_tau`. Each prompt is answered greedily by
    :func:`spag_optim.evaluation.generate_responses` (formatted as training formats it); a
    response is kept when ``judge`` scores it :data:`REFUSAL_SCORE` (1, a refusal). The responses
    are never logged: on a prompt the model does not refuse they may be harmful; only how many were
    kept is logged. The refusals are decoded text that ``from_pairs`` tokenises again: with a
    tokenizer whose decode does not invert its encode (the demo's word-level one writes
    "request." and reads it back as one unknown token) the targets differ from what the model
    said, and ``calibrate_tau`` on them warns (the demo: 3.1 nats per token).

    Args:
        model: the aligned causal LM (a transformers model, also PEFT-wrapped).
        tokenizer: its tokenizer (with a pad token).
        prompts: the harmful prompts, e.g. the selected safe rows' ``"prompt"`` fields.
        judge: decides what is a refusal; default :class:`~spag_optim.evaluation.KeywordRefusalJudge`
            (offline; refusal phrases). An LLM judge (:class:`~spag_optim.evaluation.OpenAIJudge`)
            also rejects refusals that go on to comply.
        max_new_tokens: at most this many tokens per response (a refusal cut here has no EOS
            in its text; ``from_pairs`` appends the EOS as for any refusal).
        batch_size, render, device: as for :func:`~spag_optim.evaluation.generate_responses`.

    Raises:
        ValueError: the model refused none of the prompts (it has no refusals of its own to keep:
            use the dataset's refusals and set tau yourself).
    """
    judge = KeywordRefusalJudge() if judge is None else judge
    responses = generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        render=render,
        device=device,
    )
    scores = judge.score(prompts, responses)
    pairs = [
        (prompt, response.strip())
        for prompt, response, score in zip(prompts, responses, scores)
        if score <= REFUSAL_SCORE and response.strip()
    ]
    if not pairs:
        raise ValueError(
            f"the model refused none of the {len(prompts)} prompts (judge: {type(judge).__name__}), "
            "so it has no refusals of its own to train towards: use the dataset's refusals and "
            "set tau yourself (e.g. the paper's 0.2)"
        )
    logger.info("refusals_from_model: the model refused %d of %d prompts", len(pairs), len(prompts))
    return pairs
