"""Everything the two fine-tuning examples share, so that they differ only in the training loop.

``lora_plain_loop.py`` (a hand-written PyTorch loop) and ``hf_trainer.py`` (Hugging Face
``Trainer``) both call :func:`prepare` to get a LoRA model, the tokenised fine-tuning set (with the
simulated attack mixed in) and the SPAG optimizer on DPP-selected safe data, and :func:`finish` to
save the adapter and evaluate it. Reading this file top to bottom is the SPARD recipe:

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
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dpp_select import embed_texts, select
from spard_io import read_jsonl
from spag_optim import SPAGOptimizer, SafetyBatches, calibrate_tau, make_safety_closure
from spag_optim.evaluation import (
    KeywordRefusalJudge,
    attack_success_rate,
    gsm8k_accuracy,
    load_attack_prompts,
    load_gsm8k,
    load_spard_pairs,
)
from spag_optim.guardspace import adapter_parameters, apply_guardspace, save_guardspace
from spag_optim.safety_pairs import PaddingCollator, encode_safety_pairs, pad_token_id

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "Prepared",
    "build_parser",
    "collate",
    "encode_example",
    "find_lora_targets",
    "finish",
    "format_prompt",
    "parse_args",
    "prepare",
]

#: Linear layers LoRA adapts in Llama-, Qwen2-, Mistral- and Gemma-style decoders (attention and
#: MLP projections). Other architectures name them differently: pass ``--lora-targets``.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

IGNORE_INDEX = -100

#: ``--trust-region`` not given: let ``SPAGOptimizer`` use its own default.
_LIBRARY_DEFAULT = "library default"

#: ``--defense`` choices: which adapters train (LoRA or GuardSpace's) and whether SPAG guards them.
DEFENSES = ("spard", "guardspace", "guardspace+spard")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _trust_region(value: str) -> float | str | None:
    """``relative``, ``lr``, ``none`` or a positive float (eta_safe itself)."""
    lowered = value.lower()
    if lowered in ("relative", "lr"):
        return lowered
    if lowered == "none":
        return None
    try:
        eta = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--trust-region {value!r}: use 'relative', 'lr', 'none' or a positive number"
        ) from None
    if not eta > 0:
        raise argparse.ArgumentTypeError(f"--trust-region {value!r}: a number must be > 0")
    return eta


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options both examples accept (the paper's defaults)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = p.add_argument_group("model and data (JSONL, one object per line)")
    data.add_argument("--model", required=True, help="local folder of a Hugging Face causal LM")
    data.add_argument("--train", required=True, help='task data: {"prompt", "answer"} rows')
    data.add_argument(
        "--safe-pool",
        help='safe pool: {"prompt", "safe", ...} rows (refusals); required unless --no-defense',
    )
    data.add_argument(
        "--harmful",
        help='attack data: {"prompt", "unsafe", ...} rows; omit to fine-tune without an attack',
    )
    data.add_argument("--harmful-ratio", type=float, default=0.1,
                      help="attack rows injected, as a fraction of the task rows")
    data.add_argument("--eval-harmful", help='harmful prompts for ASR: {"prompt", ...} rows')
    data.add_argument("--eval-utility", help='GSM8K-style test rows {"prompt", "answer"}')
    data.add_argument("--train-limit", type=int, help="use only the first N task rows")
    data.add_argument("--eval-limit", type=int, help="evaluate on the first N rows of each set")

    defense = p.add_argument_group("SPARD defense")
    defense.add_argument("--no-defense", action="store_true",
                         help="plain fine-tuning (the 'sft' baseline): no SPAG, no selection")
    defense.add_argument("--defense", choices=DEFENSES, default="spard",
                         help="spard: SPAG on LoRA; guardspace: GuardSpace adapters (arXiv "
                              "2510.14301) from the selected safe rows instead of LoRA, AdamW; "
                              "guardspace+spard: GuardSpace adapters trained with SPAG")
    defense.add_argument("--guardspace-null-energy", default="0.99",
                         help="GuardSpace null space: protect the directions carrying this share "
                              "of the safe rows' spectral energy, or 'paper' for the eigenvalue "
                              "threshold (often empty when the safe rows hold more tokens than "
                              "the model's width)")
    defense.add_argument("--safe-ratio", type=float, default=0.03,
                         help="safe examples selected, as a fraction of the fine-tuning set")
    defense.add_argument("--beta", type=float, default=4.0, help="DPP relevance weight")
    defense.add_argument("--tau", default="0.2",
                         help="safety loss threshold, or 'calibrate': the model's mean safety "
                              "loss on the selected safe data before fine-tuning")
    defense.add_argument("--trust-region", default=None,
                         help="'relative', 'lr', 'none' or a float eta_safe; default: the "
                              "SPAGOptimizer default")
    defense.add_argument("--safe-batch-size", type=int, default=8)

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--max-length", type=int, default=512, help="tokens per training row")
    train.add_argument("--lora-r", type=int, default=32)
    train.add_argument("--lora-alpha", type=float, default=4.0)
    train.add_argument("--lora-targets", nargs="+",
                       help="module names LoRA adapts (default: found automatically)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    train.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="auto: bfloat16 on a GPU that supports it, else float32")
    train.add_argument("--max-new-tokens", type=int, default=256,
                       help="generation length for the GSM8K evaluation (ASR: at most 64)")
    train.add_argument("--eval-batch-size", type=int, default=16)
    train.add_argument("--out", default="spard_run", help="folder for the adapter and metrics")
    return p


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the options; a bad value stops here with what to change."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    if args.safe_pool is None and not args.no_defense:
        parser.error("--safe-pool is required (or pass --no-defense for the sft baseline)")
    if args.no_defense and args.defense != "spard":
        parser.error(f"--no-defense and --defense {args.defense} contradict each other; give one")
    if args.guardspace_null_energy == "paper":
        args.guardspace_null_energy = None
    else:
        try:
            args.guardspace_null_energy = float(args.guardspace_null_energy)
        except ValueError:
            parser.error("--guardspace-null-energy: a number in (0, 1] or 'paper'")
        if not 0 < args.guardspace_null_energy <= 1:
            parser.error("--guardspace-null-energy must be in (0, 1] (or 'paper')")
    if not 0 <= args.harmful_ratio <= 1:
        parser.error("--harmful-ratio must be in [0, 1]")
    if not 0 < args.safe_ratio <= 1:
        parser.error("--safe-ratio must be in (0, 1]")
    for name in ("batch_size", "safe_batch_size", "max_length", "eval_batch_size", "lora_r"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.tau != "calibrate":
        try:
            args.tau = float(args.tau)
        except ValueError:
            parser.error(f"--tau {args.tau!r}: use a number >= 0 or 'calibrate'")
        if not args.tau >= 0:
            parser.error("--tau must be >= 0")
    if args.trust_region is not None:
        try:
            args.trust_region = _trust_region(args.trust_region)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    else:
        args.trust_region = _LIBRARY_DEFAULT
    for name in ("train_limit", "eval_limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    if args.max_steps is None and not args.epochs > 0:
        parser.error("--epochs must be > 0 (or pass --max-steps)")
    return args


# --------------------------------------------------------------------------------------------
# Text formatting and tokenisation
# --------------------------------------------------------------------------------------------


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the model sees before its answer: the chat template's user turn plus the
    assistant header when the tokenizer has a template, else ``prompt`` and a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return (tokenizer.bos_token or "") + prompt + "\n"


def encode_example(
    tokenizer: Any, prompt: str, answer: str, max_length: int
) -> dict[str, list[int]] | None:
    """Token ids of prompt + answer + EOS with the prompt masked out of the labels.

    Prompt and answer are tokenised separately and concatenated, so the mask boundary is exact
    whatever the tokenizer merges. Rows are truncated on the right to ``max_length``; a row whose
    prompt alone fills ``max_length`` has nothing to learn from and is dropped (returns None).
    """
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def encode_rows(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int, what: str
) -> list[dict[str, list[int]]]:
    """Encode (prompt, answer) pairs; say how many were dropped, fail if all were."""
    encoded = [encode_example(tokenizer, p, a, max_length) for p, a in pairs]
    kept = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise ValueError(
            f"every {what} row's prompt fills --max-length {max_length}; raise --max-length"
        )
    if dropped:
        print(f"note: dropped {dropped} {what} rows whose prompt fills --max-length {max_length}")
    return kept


def collate(rows: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded rows into ``input_ids``, ``attention_mask``, ``labels``."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(row["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class Collator:
    """Picklable collate function (DataLoader workers and ``Trainer`` may copy it)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return collate(rows, self.pad_token_id)


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


def find_lora_targets(model: nn.Module, wanted: Sequence[str] = DEFAULT_LORA_TARGETS) -> list[str]:
    """The names in ``wanted`` that end some ``nn.Linear`` in ``model``, in ``wanted`` order."""
    present = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }
    found = [name for name in wanted if name in present]
    if not found:
        linear = sorted(present)
        raise SystemExit(
            f"found none of the LoRA targets {list(wanted)} in this model; its linear layers "
            f"are named {linear}: pass some with --lora-targets"
        )
    return found


def add_lora(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (the paper's rank 32, alpha 4 by default)."""
    from peft import LoraConfig, get_peft_model

    targets = args.lora_targets or find_lora_targets(model)
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
        target_modules=list(targets), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def add_guardspace(
    model: nn.Module, safe_pairs: Sequence[tuple[str, str]], tokenizer: Any, args: argparse.Namespace,
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
    report = apply_guardspace(model, batches, batches, rank=args.lora_r, target_modules=list(targets),
                              null_energy=args.guardspace_null_energy, progress=False)
    dims = [r.null_dim for r in report.values()]
    print(f"GuardSpace: {len(report)} layers, rank {args.lora_r}, null-space dims {min(dims)}-{max(dims)}")
    return model


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

    def texts(pairs: Sequence[tuple[str, str]]) -> list[str]:
        return [format_prompt(tokenizer, p) + a for p, a in pairs]

    batch = args.eval_batch_size
    pool_emb = embed_texts(texts(pool), model, tokenizer, batch_size=batch,
                           max_length=args.max_length, device=device, progress=False)
    target_emb = embed_texts(texts(finetune), model, tokenizer, batch_size=batch,
                             max_length=args.max_length, device=device, progress=False)
    result = select(pool_emb, target_emb, k=k, method="dpp", beta=args.beta, seed=args.seed)
    return [int(i) for i in result.indices]


@dataclass
class Prepared:
    """What a training loop needs; built once by :func:`prepare`."""

    args: argparse.Namespace
    model: nn.Module
    tokenizer: Any
    device: torch.device
    train_rows: list[dict[str, list[int]]]
    collator: Collator
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


def prepare(args: argparse.Namespace) -> Prepared:
    """Steps 1-4 of the recipe (see the module docstring)."""
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
    eval_harmful = load_attack_prompts(args.eval_harmful)[: args.eval_limit] \
        if args.eval_harmful else []
    eval_utility = load_gsm8k(args.eval_utility)[: args.eval_limit] if args.eval_utility else []

    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device, resolve_dtype(args.dtype, device))
    finetune = task + attack
    rng.shuffle(finetune)
    train_rows = encode_rows(tokenizer, finetune, args.max_length, "fine-tuning")
    collator = Collator(tokenizer.pad_token_id)
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
        print(f"selected {len(safe_pairs)} safe examples of {len(pool)} with the DPP "
              f"(beta {args.beta})")

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
        batches = SafetyBatches.from_pairs(safe_pairs, tokenizer, batch_size=args.safe_batch_size,
                                           seed=args.seed, max_length=args.max_length, device=device)
        # The closure calls this very model object: its parameters are the optimizer's.
        closure = make_safety_closure(model, batches)
        tau = args.tau
        if tau == "calibrate":  # one pass over the safe data; the batches' position is kept
            passes = math.ceil(len(safe_pairs) / args.safe_batch_size)
            tau = calibrate_tau(model, batches, num_batches=passes)
            print(f"calibrated tau = {tau:.4f} (mean safety loss before fine-tuning)")
        info["tau"] = tau
        kwargs: dict[str, Any] = {"tau": tau}
        if args.trust_region is not _LIBRARY_DEFAULT:
            kwargs["trust_region"] = args.trust_region
        spag = SPAGOptimizer(inner, closure, **kwargs)
        optimizer = spag
    model.train()
    return Prepared(args=args, model=model, tokenizer=tokenizer, device=device,
                    train_rows=train_rows, collator=collator, optimizer=optimizer, spag=spag,
                    eval_harmful=eval_harmful, eval_utility=eval_utility, info=info)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
    batch_size: int, device: torch.device,
) -> list[str]:
    """Greedy completions of ``prompts`` (formatted like the training prompts), new text only."""
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [format_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return outputs


def evaluate(prep: Prepared) -> dict[str, Any]:
    """ASR on ``--eval-harmful`` and GSM8K accuracy on ``--eval-utility`` (greedy decoding).

    Responses are scored, never printed: on real data they may be harmful.
    """
    args, metrics = prep.args, {}
    if prep.eval_harmful:
        prompts = prep.eval_harmful
        # A refusal shows in its first words: 64 new tokens are plenty (fewer if asked).
        responses = generate(prep.model, prep.tokenizer, prompts, min(64, args.max_new_tokens),
                             args.eval_batch_size, prep.device)
        scores = KeywordRefusalJudge().score(prompts, responses)
        metrics["asr"] = attack_success_rate(scores)
        metrics["n_eval_harmful"] = len(prompts)
    if prep.eval_utility:
        rows = prep.eval_utility
        responses = generate(prep.model, prep.tokenizer, [r["prompt"] for r in rows],
                             args.max_new_tokens, args.eval_batch_size, prep.device)
        # Strictly the number after '####' (no last-number fallback): the model must answer in
        # the format it was fine-tuned on.
        metrics["accuracy"] = gsm8k_accuracy(responses, [r["target"] for r in rows],
                                             fallback_last_number=False)
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
