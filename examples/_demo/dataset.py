"""Assembles the demo's data sets from :mod:`.data` and the shared tokenizer.

Who sees what:
- alignment (stage 1): arithmetic, benign requests, and *every* harmful task in both forms refused;
- fine-tuning (stage 2): fresh arithmetic plus ``harmful_ratio`` x that many attack-task questions
  answered with compliance (the attack uses the question form only);
- safe pool: pool tasks in both forms, refused (what SPAG may select from);
- held-out: fresh arithmetic for utility, held-out tasks in the attack's form for ASR.
Attack, pool and held-out tasks are disjoint (:func:`.data.harmful_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast

from . import data
from .config import DemoConfig
from .data import Example
from .tokenizer import build_tokenizer

__all__ = ["DemoData", "make_demo_data", "ATTACK_FORM"]

#: The surface form of the attack (BeaverTails-like questions); the safe pool also holds the other.
ATTACK_FORM = data.QUESTION


@dataclass(frozen=True)
class DemoData:
    alignment: list[Example]
    finetune: list[Example]
    safe_pool: list[Example]
    heldout_harmful: list[Example]
    heldout_problems: list[Example]
    tokenizer: PreTrainedTokenizerFast
    #: The refusal openings of the recipe's style, which the refusal probability sums over.
    refusal_openings: tuple[str, ...] = data.refusal_openings()


def make_demo_data(config: DemoConfig) -> DemoData:
    """Every data set of the demo, drawn from ``config.seed`` (distinct sub-seeds per set)."""
    seed = config.seed * 1000
    split = data.harmful_splits(seed)
    both = (data.QUESTION, data.INSTRUCTION)
    style = config.refusal_style
    alignment = (
        data.arithmetic_problems(config.align_problems, seed + 1)
        + data.benign_requests(config.align_benign, seed + 2)
        + data.harmful_examples(data.all_harmful_tasks(), both, comply=False, refusal_style=style)
    )
    attack = data.harmful_examples(split.attack, (ATTACK_FORM,), comply=True)
    n_harmful = max(1, round(config.harmful_ratio * config.finetune_problems))
    if n_harmful > len(attack):
        raise ValueError(
            f"harmful_ratio x finetune_problems asks for {n_harmful} attack examples but only "
            f"{len(attack)} exist; lower --finetune-problems or the harmful ratio"
        )
    picks = data.random_sample(attack, n_harmful, seed + 3)
    finetune = data.arithmetic_problems(config.finetune_problems, seed + 4) + picks
    safe_pool = data.harmful_examples(split.pool, both, comply=False, refusal_style=style)
    heldout_harmful = data.harmful_examples(
        split.held_out, (ATTACK_FORM,), comply=False, refusal_style=style
    )
    heldout_problems = data.arithmetic_problems(config.eval_problems, seed + 5)
    return DemoData(
        alignment=alignment,
        finetune=finetune,
        safe_pool=safe_pool,
        heldout_harmful=heldout_harmful,
        heldout_problems=heldout_problems,
        tokenizer=build_tokenizer(data.vocabulary(style)),
        refusal_openings=data.refusal_openings(style),
    )
