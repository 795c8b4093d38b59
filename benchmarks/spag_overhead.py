"""What SPAG's own arithmetic costs on top of the work any safety projection must do.

Per step, SPAG runs the inner optimizer step, a safety forward and a safety backward; those three
are the baseline (timed by doing them by hand). SPAG's overhead is everything else: the relative
trust region's snapshot, the global norm, alpha on device, NaN guarding and theta -= alpha g.
Reported as ratios measured in one run, on a small Llama built from a config (CPU or CUDA), for
full fine-tuning at a short and a typical sequence length and for LoRA (the examples' setting).
SPAG's arithmetic is a few memory-bound passes over the *trainable* parameters, so its share
shrinks as the tokens per step grow and all but vanishes under LoRA.

    python benchmarks/spag_overhead.py [--device cuda] [--steps 30]

Writes benchmarks/results/spag_overhead.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spag_optim import SPAGOptimizer

# The LoRA target list the examples and the demo use (examples/lora_targets.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))


def build(device, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).to(device)


def batch(device, seed, length, size=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2048, (size, length), generator=g).to(device)
    return {"input_ids": ids, "labels": ids}


def trainable(model, training):
    """The model as trained: every parameter, or LoRA adapters (peft) on the attention and MLP."""
    if training == "full":
        return model
    from peft import LoraConfig, get_peft_model

    from lora_targets import DEFAULT_LORA_TARGETS

    return get_peft_model(
        model, LoraConfig(r=32, lora_alpha=4, target_modules=list(DEFAULT_LORA_TARGETS))
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step_fn, device):
    sync(device)
    start = time.perf_counter()
    step_fn()
    sync(device)
    return time.perf_counter() - start


def paired_ratio(baseline_fn, spag_fn, device, steps, warmup=3):
    """Median over interleaved pairs of spag/baseline time: robust to load that drifts."""
    for _ in range(warmup):
        baseline_fn()
        spag_fn()
    base, spag, ratios = [], [], []
    for _ in range(steps):
        b = timed(baseline_fn, device)
        s = timed(spag_fn, device)
        base.append(b)
        spag.append(s)
        ratios.append(s / b)
    return statistics.median(base), statistics.median(spag), statistics.median(ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "spag_overhead.md")
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    configs = [
        ("relative (default)", {}),
        ("None", {"trust_region": None}),
        ("None, sync-free", {"trust_region": None, "skip_if_safe": False}),
    ]
    setups = [("full", 64), ("full", 256), ("LoRA r=32", 256)]
    rows = []
    for training, length in setups:
        util, safe = batch(device, 1, length), batch(device, 2, length)
        for label, kwargs in configs:
            base_model = trainable(build(device), training)
            inner = torch.optim.AdamW(
                [p for p in base_model.parameters() if p.requires_grad], lr=1e-4
            )
            base_model(**util).loss.backward()

            def baseline():  # the work any projection needs: inner step, safety forward + backward
                inner.step()
                loss = base_model(**safe).loss
                inner.zero_grad(set_to_none=False)
                loss.backward()

            model = trainable(build(device), training)
            opt = SPAGOptimizer(
                torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4),
                lambda: model(**safe).loss,
                tau=0.0,
                **kwargs,
            )  # tau 0: always project
            model(**util).loss.backward()
            t_base, t_spag, ratio = paired_ratio(baseline, opt.step, device, args.steps)
            assert opt.num_projections > 0
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append(
                (
                    f"{training}, 8x{length} tokens, {n_train / 1e6:.2f}M trainable",
                    label,
                    t_base,
                    t_spag,
                    ratio - 1.0,
                )
            )
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"# SPAG overhead ({device.type}, {torch.get_num_threads()} threads, {params / 1e6:.1f}M-parameter Llama)",
        "",
        "Baseline: inner AdamW step + safety forward + safety backward, done by hand. Overhead is the",
        f"median over {args.steps} interleaved (baseline, SPAG) pairs of SPAG/baseline - 1 (tau = 0, every step projects).",
        "",
        "| training | trust region | baseline (ms) | SPAG step (ms) | overhead |",
        "| --- | --- | ---: | ---: | ---: |",
    ] + [
        f"| {setup} | {label} | {b * 1e3:.1f} | {t * 1e3:.1f} | {ratio * 100:+.2f}% |"
        for setup, label, b, t, ratio in rows
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
