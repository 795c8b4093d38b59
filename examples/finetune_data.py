"""The fine-tuning data of both examples: task rows, the simulated attack, their tokenisation,
and the safe rows the relevance-diversity DPP selects for them.

Prompts are formatted exactly like SPAG's safety pairs (:func:`spag_optim.safety_pairs.format_prompt`:
the chat template's user turn when the tokenizer has one), so training, selection, the safety
loss and generation all see the same text.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dpp_select import embed_texts, select
from spag_optim.evaluation import load_spard_pairs
from spag_optim.safety_pairs import encode_pair, format_prompt
from spard_io import read_jsonl

__all__ = ["encode_rows", "load_task_rows", "sample_attack_rows", "select_safe_rows"]


def encode_rows(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int, what: str
) -> list[dict[str, list[int]]]:
    """Encode (prompt, answer) pairs; say how many were dropped, fail if all were."""
    encoded = [encode_pair(tokenizer, p, a, max_length) for p, a in pairs]
    kept = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise ValueError(
            f"every {what} row's prompt fills --max-length {max_length}; raise --max-length"
        )
    if dropped:
        print(f"note: dropped {dropped} {what} rows whose prompt fills --max-length {max_length}")
    return kept


def load_task_rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    rows = read_jsonl(args.train, required=("prompt", "answer"))
    if args.train_limit is not None:
        rows = rows[: args.train_limit]
    if not rows:
        raise SystemExit(f"--train {args.train}: no rows")
    return [(r["prompt"], r["answer"]) for r in rows]


def sample_attack_rows(
    args: argparse.Namespace, n_task: int, rng: random.Random
) -> list[tuple[str, str]]:
    """``round(harmful_ratio * n_task)`` distinct harmful prompts answered with their unsafe text."""
    if args.harmful is None or args.harmful_ratio == 0:
        return []
    rows = load_spard_pairs(args.harmful, "unsafe")
    wanted = round(args.harmful_ratio * n_task)
    if wanted > len(rows):
        raise SystemExit(
            f"--harmful {args.harmful} has {len(rows)} rows but --harmful-ratio "
            f"{args.harmful_ratio} x {n_task} task rows needs {wanted}; lower the ratio"
        )
    return [(r["prompt"], r["response"]) for r in rng.sample(rows, wanted)]


def select_safe_rows(
    model: nn.Module,
    tokenizer: Any,
    pool: Sequence[tuple[str, str]],
    finetune: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    device: torch.device,
) -> list[int]:
    """Indices of the safe-pool rows the relevance-diversity DPP picks for this fine-tuning set.

    Both sides are embedded as the text the model trains on (prompt in its template, answer),
    with the base model's mean-pooled hidden states, before LoRA is added.
    """
    k = max(1, math.ceil(args.safe_ratio * len(finetune)))
    if k > len(pool):
        raise SystemExit(
            f"--safe-ratio {args.safe_ratio} x {len(finetune)} fine-tuning rows needs {k} safe "
            f"examples but --safe-pool has {len(pool)}; lower the ratio or grow the pool"
        )

    def embed(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return embed_texts(
            [format_prompt(tokenizer, p) + a for p, a in pairs],
            model,
            tokenizer,
            batch_size=args.eval_batch_size,
            max_length=args.max_length,
            device=device,
            progress=False,
        )

    pool_emb, target_emb = embed(pool), embed(finetune)
    result = select(pool_emb, target_emb, k=k, method="dpp", beta=args.beta, seed=args.seed)
    return [int(i) for i in result.indices]
