"""Why SPAG's safety loss stays above tau in the demo: every step of one attack, instrumented.

For one seed and attack preset of the offline demo (``examples/_demo``: the tiny Llama aligned
from scratch, LoRA, AdamW, 12 DPP-selected safe rows), this runs stage 2 under
``SPAGOptimizer`` with the demo's settings (or ``--projection-iterations K``, another
``--selection`` or ``--safe-ratio``) in its own copy of
the demo's training loop and records, per step:

* the safety loss on the step's safe batch at theta+ (before the projection, what the demo's
  ``safety_losses`` and the sweep's loss panel show) and after it, with the linear prediction
  ``l - alpha ||g||^2`` (= tau when the trust region does not bind);
* alpha, ||g||, the uncapped alpha ``(l - tau) / ||g||^2`` and whether the trust region capped it;
* the lengths of the utility step ``||theta+ - theta||`` and of the projection ``alpha ||g||``;
* the cosine between the utility gradient and the safety gradient;
* the safety loss on all safe rows and the refusal loss on the held-out harmful prompts (the
  prompts ASR is measured on), after the step.

Then ASR and utility as the sweep measures them. Run it niced, on one thread::

    nice -n 10 python benchmarks/spag_constraint_probe.py --seed 0 --attack standard \\
        --out /tmp/probe.json [--projection-iterations 5] [--cache-dir DIR]

``benchmarks/results/spag_constraint.md`` reports what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from _demo import evaluation  # noqa: E402
from _demo.alignment import aligned_model  # noqa: E402
from _demo.attack import lora_copy  # noqa: E402
from _demo.config import DemoConfig, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.encoding import encode  # noqa: E402
from _demo.methods import PENALTY_LAMBDA  # noqa: E402
from _demo.selection import SafeSelector  # noqa: E402
from spag_optim import SafetyBatches, SPAGOptimizer  # noqa: E402
from spag_optim.baselines import PenaltyOptimizer  # noqa: E402
from spag_optim.safety_pairs import PaddingCollator  # noqa: E402


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


@torch.no_grad()
def batch_loss(model, batch) -> float:
    return float(model(**batch).loss)


class RecordingClosure:
    """The demo's safety closure (next safe batch, model loss) that remembers its last batch."""

    def __init__(self, model, batches: SafetyBatches):
        self.model, self.batches, self.last = model, batches, None

    def __call__(self) -> torch.Tensor:
        self.last = next(self.batches)
        return self.model(**self.last).loss

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state["batches"])


def step_record(
    opt, model, params, closure, before, util_grad, tau, whole_safe, heldout
) -> dict[str, float]:
    """What one step did (see the module docstring); ``p.grad`` holds alpha * g after the step.
    For the penalty (``--penalty``) only the two losses after the step."""
    losses = {
        "safe_set_loss": batch_loss(model, whole_safe),
        "heldout_refusal_loss": batch_loss(model, heldout),
    }
    if not isinstance(opt, SPAGOptimizer):
        return losses
    stats = {k: float(v) for k, v in opt.last_stats.items()}
    after = flat(params)
    scaled = flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
    alpha, g_norm, loss = stats["alpha"], stats["safety_grad_norm"], stats["safety_loss"]
    projected = alpha > 0
    theta_plus = after + scaled if projected and opt.projection_iterations == 1 else None
    uncapped = (loss - tau) / g_norm**2 if g_norm > 0 else 0.0
    record = {
        "loss_before": loss,
        "alpha": alpha,
        "grad_norm": g_norm,
        "alpha_uncapped": uncapped if loss > tau else 0.0,
        "capped": bool(projected and alpha < uncapped * (1 - 1e-6)),
        "projection_length": float(scaled.norm()) if projected else 0.0,
        "linear_prediction": loss - alpha * g_norm**2,
        "loss_after": batch_loss(model, closure.last),
        **losses,
        "total_move": float((after - before).norm()),
    }
    if theta_plus is not None:
        record["utility_step_length"] = float((theta_plus - before).norm())
        g = scaled / alpha
        record["cos_utility_safety"] = float(util_grad @ g / (util_grad.norm() * g.norm() + 1e-30))
    return record


def run(
    seed: int,
    attack: str,
    iterations: int,
    cache_dir: Path,
    selection: str = "dpp",
    safe_ratio: float | None = None,
    penalty: bool = False,
) -> dict[str, Any]:
    config = with_attack(replace(DemoConfig(), seed=seed), attack)
    if safe_ratio is not None:
        config = replace(config, safe_ratio=safe_ratio)
    data = make_demo_data(config)
    tok = data.tokenizer
    aligned, _, _ = aligned_model(config, data, cache_dir, progress=False)
    selector = SafeSelector.for_demo(aligned, data, config)
    safe = selector.select(selection)
    collate = PaddingCollator(tok.pad_token_id)
    whole_safe, heldout = collate(encode(tok, safe)), collate(encode(tok, data.heldout_harmful))
    aligned_stats = {
        "safe_set_loss": batch_loss(aligned, whole_safe),
        "heldout_refusal_loss": batch_loss(aligned, heldout),
        "safe_rows": len(safe),
    }
    torch.manual_seed(config.seed)
    model, params = lora_copy(aligned, config)
    batches = SafetyBatches(
        encode(tok, safe), batch_size=config.safety_batch, collate_fn=collate, seed=seed
    )
    closure = RecordingClosure(model, batches)
    inner = torch.optim.AdamW(params, lr=config.finetune_lr)
    if penalty:  # the demo's penalty row: lambda 1 at the same tau, on the same safe batches
        opt = PenaltyOptimizer(inner, closure, tau=config.tau, lam=PENALTY_LAMBDA)
    else:
        opt = SPAGOptimizer(inner, closure, tau=config.tau, projection_iterations=iterations)
    rows = encode(tok, data.finetune)
    generator = torch.Generator().manual_seed(config.seed + 1)  # the demo's training order
    steps = []
    model.train()
    for _ in range(config.finetune_epochs):
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(rows), config.finetune_batch):
            model(
                **collate([rows[i] for i in order[start : start + config.finetune_batch]])
            ).loss.backward()
            before, util_grad = flat(params), flat([p.grad for p in params])
            opt.step()
            steps.append(
                step_record(
                    opt, model, params, closure, before, util_grad, config.tau, whole_safe, heldout
                )
            )
            opt.zero_grad(set_to_none=True)
    model.eval()
    return {
        "seed": seed,
        "attack": attack,
        "projection_iterations": iterations,
        "tau": config.tau,
        "selection": selection,
        "safe_ratio": config.safe_ratio,
        "method": "penalty" if penalty else "spag",
        "aligned": aligned_stats,
        "steps": steps,
        "asr": evaluation.asr(model, tok, data.heldout_harmful),
        "utility": evaluation.utility(model, tok, data.heldout_problems),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "capability": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack", default="standard")
    parser.add_argument("--projection-iterations", type=int, default=1)
    parser.add_argument(
        "--selection", default="dpp", help="dpp_select method: dpp, random, top_relevance"
    )
    parser.add_argument(
        "--safe-ratio", type=float, default=None, help="safe rows / fine-tuning rows (demo: 0.03)"
    )
    parser.add_argument(
        "--penalty", action="store_true", help="the demo's hinge penalty instead of SPAG"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("spard_demo") / "cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run(
        args.seed,
        args.attack,
        args.projection_iterations,
        args.cache_dir,
        args.selection,
        args.safe_ratio,
        args.penalty,
    )
    args.out.write_text(json.dumps(result) + "\n")
    s = result["steps"]
    print(
        f"seed {args.seed} {args.attack} {args.selection} {result['method']} K={args.projection_iterations}: "
        f"ASR {result['asr']:.2f} utility {result['utility']:.2f}; projected "
        f"{sum(x.get('alpha', 0) > 0 for x in s)}/{len(s)}, capped {sum(x.get('capped', 0) for x in s)}; "
        f"aligned {result['aligned']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
