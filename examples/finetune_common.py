"""Everything the two fine-tuning examples share, so that they differ only in the training loop.

``lora_plain_loop.py`` (a hand-written PyTorch loop) and ``hf_trainer.py`` (Hugging Face
``Trainer``) both parse the options of ``finetune_cli.py``, call :func:`prepare` to get a LoRA
model, the tokenised fine-tuning set (with the simulated attack mixed in) and the SPAG optimizer
on DPP-selected safe data (the data steps are in ``finetune_data.py``), and :func:`finish` to save
the adapter and evaluate it. Reading :func:`prepare` top to bottom is the SPARD recipe:

1. load a local causal LM and its tokenizer (its chat template when it has one);
2. build the fine-tuning set: task rows plus ``--harmful-ratio`` x N harmful rows answered with
   their ``unsafe`` text (the attack; that text is only ever tokenised, never printed);
3. embed the safe pool and the fine-tuning set with the base model's mean-pooled hidden states and
   pick ``--safe-ratio`` x N safe examples with the relevance-diversity DPP;
4. wrap AdamW over the LoRA parameters in ``SPAGOptimizer`` with a safety closure on those examples
   (``--defense guardspace``: GuardSpace adapters built from those examples replace LoRA and AdamW
   trains them alone; ``guardspace+spard``: both);
5. after training: save the adapter, measure attack success rate (ASR) on ``--eval-harmful`` and
   GSM8K accuracy on ``--eval-utility`` with greedy decoding, write ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from finetune_cli import LIBRARY_DEFAULT
from finetune_data import encode_rows, load_task_rows, sample_attack_rows, select_safe_rows
from lora_targets import find_lora_targets
from spag_optim import SafetyBatches, SPAGOptimizer, calibrate_tau, make_safety_closure
from spag_optim.evaluation import (
    KeywordRefusalJudge,
    attack_success_rate,
    generate_responses,
    gsm8k_accuracy,
    load_attack_prompts,
    load_gsm8k,
    load_spard_pairs,
)
from spag_optim.guardspace import adapter_parameters, apply_guardspace, save_guardspace
from spag_optim.safety_pairs import PaddingCollator, encode_safety_pairs, pad_token_id

__all__ = ["Prepared", "finish", "prepare", "spag_stats"]

# --------------------------------------------------------------------------------------------
# Model, data, selection, optimizer
# --------------------------------------------------------------------------------------------


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device here; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_model(path: str, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """Load a local causal LM and its tokenizer (never the network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(path):
        raise SystemExit(f"--model {path}: not a folder; pass a local Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise SystemExit(f"--model {path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return model.to(device), tokenizer


def add_lora(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (the paper's rank 32, alpha 4 by default)."""
    from peft import LoraConfig, get_peft_model

    targets = args.lora_targets or find_lora_targets(model)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def add_guardspace(
    model: nn.Module,
    safe_pairs: Sequence[tuple[str, str]],
    tokenizer: Any,
    args: argparse.Namespace,
) -> nn.Module:
    """GuardSpace (arXiv 2510.14301) in place of LoRA: the selected safe rows (prompt and refusal)
    are both the safety calibration data and the null-space data, so after training every adapted
    layer's output on them is unchanged; rank ``--lora-r`` on the LoRA targets (same budget)."""
    safe_rows = encode_safety_pairs(safe_pairs, tokenizer, args.max_length)
    collator = PaddingCollator(pad_token_id(tokenizer))
    size = args.safe_batch_size
    batches = []
    for start in range(0, len(safe_rows), size):
        batch = collator(safe_rows[start : start + size])
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    targets = args.lora_targets or find_lora_targets(model)
    report = apply_guardspace(
        model,
        batches,
        batches,
        rank=args.lora_r,
        target_modules=list(targets),
        null_energy=args.guardspace_null_energy,
        progress=False,
    )
    dims = [r.null_dim for r in report.values()]
    print(
        f"GuardSpace: {len(report)} layers, rank {args.lora_r}, null-space dims {min(dims)}-{max(dims)}"
    )
    return model


@dataclass
class Prepared:
    """What a training loop needs; built once by :func:`prepare`."""

    args: argparse.Namespace
    model: nn.Module
    tokenizer: Any
    device: torch.device
    train_rows: list[dict[str, list[int]]]
    collator: PaddingCollator
    optimizer: torch.optim.Optimizer
    spag: SPAGOptimizer | None
    eval_harmful: list[str]
    eval_utility: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def num_steps(self) -> int:
        """Optimizer steps the run takes: ``--max-steps`` or ``--epochs`` passes (rounded up)."""
        if self.args.max_steps is not None:
            return self.args.max_steps
        per_epoch = math.ceil(len(self.train_rows) / self.args.batch_size)
        return max(1, math.ceil(self.args.epochs * per_epoch))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(args: argparse.Namespace, *, for_trainer: bool = False) -> Prepared:
    """Steps 1-4 of the recipe (see the module docstring).

    ``for_trainer``: SPAG's safety closure is a
    :class:`~spag_optim.integrations.trainer.TrainerSafetyClosure`, for ``attach_spag(trainer)``.
    """
    seed_everything(args.seed)
    rng = random.Random(args.seed)
    # Read every data file before loading the model: a bad line fails in a second, not after
    # minutes of loading weights.
    task = load_task_rows(args)
    attack = sample_attack_rows(args, len(task), rng)
    pool: list[tuple[str, str]] = []
    if not args.no_defense:
        pool = [(r["prompt"], r["response"]) for r in load_spard_pairs(args.safe_pool, "safe")]
    # Shared loaders: the GSM8K one checks every reference has a '#### N' answer, naming the line.
    eval_harmful = (
        load_attack_prompts(args.eval_harmful)[: args.eval_limit] if args.eval_harmful else []
    )
    eval_utility = load_gsm8k(args.eval_utility)[: args.eval_limit] if args.eval_utility else []

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device, resolve_dtype(args.dtype, device))
    finetune = task + attack
    rng.shuffle(finetune)
    train_rows = encode_rows(tokenizer, finetune, args.max_length, "fine-tuning")
    collator = PaddingCollator(tokenizer.pad_token_id)
    info: dict[str, Any] = {
        "method": "sft" if args.no_defense else args.defense,
        "task_rows": len(task),
        "attack_rows": len(attack),
        "train_rows": len(train_rows),
    }
    print(f"fine-tuning set: {len(task)} task rows + {len(attack)} injected harmful rows")

    safe_pairs: list[tuple[str, str]] = []
    if not args.no_defense:
        picked = select_safe_rows(model, tokenizer, pool, finetune, args, device)
        safe_pairs = [pool[i] for i in picked]
        info["safe_selected"] = len(safe_pairs)
        print(
            f"selected {len(safe_pairs)} safe examples of {len(pool)} with the DPP "
            f"(beta {args.beta})"
        )

    if args.no_defense or args.defense == "spard":
        model = add_lora(model, args)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model = add_guardspace(model, safe_pairs, tokenizer, args)
        params = adapter_parameters(model)
    inner = torch.optim.AdamW(params, lr=args.lr)
    spag = None
    optimizer: torch.optim.Optimizer = inner
    if not args.no_defense and args.defense != "guardspace":
        # Chat template, labels on the refusal only (the paper's safety loss), padded batches.
        pairs_kwargs = dict(
            batch_size=args.safe_batch_size, seed=args.seed, max_length=args.max_length
        )
        if for_trainer:
            from spag_optim.integrations.trainer import TrainerSafetyClosure

            # attach_spag(trainer) binds it to the trainer's (possibly wrapped) model and device.
            closure = TrainerSafetyClosure.from_pairs(safe_pairs, tokenizer, **pairs_kwargs)
            batches = closure.batches
        else:
            batches = SafetyBatches.from_pairs(safe_pairs, tokenizer, device=device, **pairs_kwargs)
            # The closure calls this very model object: its parameters are the optimizer's.
            closure = make_safety_closure(model, batches)
        tau = args.tau
        if tau == "calibrate":  # one pass over the safe data; the batches' position is kept
            passes = math.ceil(len(safe_pairs) / args.safe_batch_size)
            tau = calibrate_tau(model, batches, num_batches=passes)
            print(f"calibrated tau = {tau:.4f} (mean safety loss before fine-tuning)")
        info["tau"] = tau
        kwargs: dict[str, Any] = {"tau": tau}
        if args.trust_region is not LIBRARY_DEFAULT:
            kwargs["trust_region"] = args.trust_region
        spag = SPAGOptimizer(inner, closure, **kwargs)
        optimizer = spag
    model.train()
    return Prepared(
        args=args,
        model=model,
        tokenizer=tokenizer,
        device=device,
        train_rows=train_rows,
        collator=collator,
        optimizer=optimizer,
        spag=spag,
        eval_harmful=eval_harmful,
        eval_utility=eval_utility,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate(prep: Prepared) -> dict[str, Any]:
    """ASR on ``--eval-harmful`` and GSM8K accuracy on ``--eval-utility`` (greedy decoding).

    Responses are scored, never printed: on real data they may be harmful.
    """
    args, metrics = prep.args, {}
    if prep.eval_harmful:
        prompts = prep.eval_harmful
        # A refusal shows in its first words: 64 new tokens are plenty (fewer if asked).
        responses = generate_responses(
            prep.model,
            prep.tokenizer,
            prompts,
            max_new_tokens=min(64, args.max_new_tokens),
            batch_size=args.eval_batch_size,
            device=prep.device,
        )
        scores = KeywordRefusalJudge().score(prompts, responses)
        metrics["asr"] = attack_success_rate(scores)
        metrics["n_eval_harmful"] = len(prompts)
    if prep.eval_utility:
        rows = prep.eval_utility
        responses = generate_responses(
            prep.model,
            prep.tokenizer,
            [r["prompt"] for r in rows],
            max_new_tokens=args.max_new_tokens,
            batch_size=args.eval_batch_size,
            device=prep.device,
        )
        # Strictly the number after '####' (no last-number fallback): the model must answer in
        # the format it was fine-tuned on.
        metrics["accuracy"] = gsm8k_accuracy(
            responses, [r["target"] for r in rows], fallback_last_number=False
        )
        metrics["n_eval_utility"] = len(rows)
    return metrics


def finish(prep: Prepared, steps: int, spag_history: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Save the adapter, evaluate, write and print ``metrics.json``; return the metrics.

    GuardSpace adapters go to ``adapter/guardspace.pt`` (:func:`spag_optim.guardspace.load_guardspace`
    puts them back on the base model; ``merge_guardspace`` + ``save_pretrained`` gives a plain
    checkpoint)."""
    os.makedirs(prep.args.out, exist_ok=True)
    adapter_dir = os.path.join(prep.args.out, "adapter")
    if prep.info["method"].startswith("guardspace"):
        os.makedirs(adapter_dir, exist_ok=True)
        save_guardspace(prep.model, os.path.join(adapter_dir, "guardspace.pt"))
    else:
        prep.model.save_pretrained(adapter_dir)
    metrics: dict[str, Any] = dict(prep.info)
    metrics["steps"] = steps
    metrics["train_seconds"] = round(time.perf_counter() - prep.started, 2)
    if prep.spag is not None:
        metrics["projections"] = prep.spag.num_projections
        metrics["nonfinite_safety_steps"] = prep.spag.num_nonfinite
        losses = [s["safety_loss"] for s in spag_history]
        metrics["final_safety_loss"] = losses[-1] if losses else None
    metrics.update(evaluate(prep))
    metrics["adapter"] = adapter_dir
    path = os.path.join(prep.args.out, "metrics.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    shown = {k: metrics[k] for k in ("method", "asr", "accuracy", "projections") if k in metrics}
    print(f"wrote {path}: {shown}")
    return metrics


def spag_stats(spag: SPAGOptimizer) -> dict[str, float]:
    """``last_stats`` as plain floats (some entries may be 0-dim tensors)."""
    return {k: float(v) for k, v in spag.last_stats.items()}
