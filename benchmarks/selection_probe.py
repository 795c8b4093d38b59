"""What SPAG's safe-data choices pick in the demo, and what each choice protects.

For one attack preset and several seeds, compares the DPP (``spard``'s choice), uniform random,
top relevance, and the DPP on *centered* embeddings (the pool and fine-tuning embeddings minus
their joint mean, which removes the component every mean-pooled hidden state shares): how many
picks are in the attack's surface form (questions), how many of the attack's categories and of
the six prompt templates they cover, and their relevance. With ``--train`` it also runs SPAG on
each choice and reports the ASR on held-out tasks in *both* surface forms (the demo's ASR uses the
attack's form only) and the refusal loss on the whole safe pool per form. Means and 95% Student-t
intervals over seeds, as in ``defense_sweep.py``.

    python benchmarks/selection_probe.py --attack heavy --seeds 0-4 --train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import defense_sweep as ds  # noqa: E402  (also puts examples/ on the path)
import dpp_select  # noqa: E402
from _demo import data as D  # noqa: E402
from _demo import evaluation  # noqa: E402
from _demo.attack import run_attack  # noqa: E402
from _demo.encoding import encode  # noqa: E402
from _demo.intervals import parse_seeds, t_interval  # noqa: E402
from _demo.methods import METHODS  # noqa: E402
from spag_optim.safety_pairs import PaddingCollator  # noqa: E402

CHOICES = ("dpp", "random", "top_relevance", "dpp_centered")


def _picks(ctx) -> dict[str, list[int]]:
    sel, config = ctx["selector"], ctx["config"]
    pool, target = sel._pool_emb, sel._target_emb
    out = {
        m: dpp_select.select(
            pool, target, k=sel.k, method=m, beta=config.beta, seed=config.seed
        ).indices
        for m in CHOICES[:3]
    }
    mean = np.concatenate([pool, target]).mean(axis=0)
    out["dpp_centered"] = dpp_select.select(
        pool - mean, target - mean, k=sel.k, beta=config.beta
    ).indices
    return {m: [int(i) for i in idx] for m, idx in out.items()}


@torch.no_grad()
def _loss(model, tok, rows) -> float:
    model.eval()
    return float(model(**PaddingCollator(tok.pad_token_id)(encode(tok, rows))).loss)


def probe(attack: str, seed: int, train: bool, cache_dir: Path) -> dict[str, dict[str, float]]:
    ctx = ds._context(attack, seed, False, cache_dir)
    data, config, sel = ctx["data"], ctx["config"], ctx["selector"]
    tok = data.tokenizer
    category = D.harmful_categories()
    attack_cats = {category[t] for t in D.harmful_splits(seed * 1000).attack}
    relevance = dpp_select.relevance_scores(sel._pool_emb, sel._target_emb)
    pool = data.safe_pool
    task = [
        next(t for t in sorted(category, key=len, reverse=True) if t in ex.prompt) for ex in pool
    ]
    questions = [ex for ex in pool if ex.prompt.endswith("?")]
    instructions = [ex for ex in pool if not ex.prompt.endswith("?")]
    held_instr = D.harmful_examples(
        D.harmful_splits(seed * 1000).held_out, (D.INSTRUCTION,), comply=False
    )
    rows = {}
    for name, idx in _picks(ctx).items():
        chosen = [pool[i] for i in idx]
        r = {
            "k": len(idx),
            "questions": sum(ex.prompt.endswith("?") for ex in chosen),
            "attack_categories": len({category[task[i]] for i in idx} & attack_cats),
            "templates": len({ex.prompt.replace(task[i], "{t}") for i, ex in zip(idx, chosen)}),
            "relevance": float(relevance[idx].mean()),
        }
        if train:
            o = run_attack(
                ctx["aligned"],
                tok,
                data.finetune,
                METHODS["spard"],
                chosen,
                config,
                desc=name,
                progress=False,
            )
            r |= {
                "asr_question": evaluation.asr(o.model, tok, data.heldout_harmful),
                "asr_instruction": evaluation.asr(o.model, tok, held_instr),
                "utility": evaluation.utility(o.model, tok, data.heldout_problems),
                "loss_questions": _loss(o.model, tok, questions),
                "loss_instructions": _loss(o.model, tok, instructions),
            }
        rows[name] = r
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", default="heavy", choices=list(ds.ATTACKS))
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument(
        "--train", action="store_true", help="also run SPAG on each choice (minutes)"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("spard_demo") / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = parse_seeds(args.seeds)
    per_seed = {s: probe(args.attack, s, args.train, args.cache_dir) for s in seeds}
    fields = list(next(iter(per_seed.values()))["dpp"])
    lines = [
        f"# Safe-data choices under the `{args.attack}` attack (seeds {args.seeds})",
        "",
        f"`python benchmarks/selection_probe.py --attack {args.attack} --seeds {args.seeds}"
        f"{' --train' if args.train else ''}`. Mean ± 95% Student-t half-width over seeds. "
        "`questions`: picks in the attack's surface form; `attack_categories`: of the attack's 6; "
        "`templates`: of 6; `asr_*`: SPAG on that choice, held-out tasks per form; `loss_*`: "
        "refusal loss on the whole safe pool per form after the attack.",
        "",
        "| choice | " + " | ".join(fields) + " |",
        "|" + " --- |" * (1 + len(fields)),
    ]
    for name in CHOICES:
        cells = []
        for f in fields:
            mean, half = t_interval([per_seed[s][name][f] for s in seeds])
            d = 3 if f == "relevance" else 2  # relevance differs in the third decimal
            cells.append(f"{mean:.{d}f}" if np.isnan(half) else f"{mean:.{d}f} ± {half:.{d}f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    path = args.out / f"selection_probe_{args.attack}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
