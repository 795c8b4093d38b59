"""SPARD in a few minutes on a laptop CPU, offline: align, attack, defend.

    python examples/quickstart.py                 # every method, standard and strong attack
    python examples/quickstart.py --methods sft,spard --attacks heavy --seed 1

1. Stage 1 trains a tiny Llama from scratch into an *aligned* model: it solves word problems,
   answers benign how-to requests, and refuses placeholder harmful requests (cached after the
   first run; ``--no-cache`` retrains).
2. Stage 2 is the attack: LoRA fine-tuning on word problems with harmful questions answered with
   (placeholder) compliance. Plain fine-tuning (``sft``) loses the refusals. ``--attacks`` picks
   presets (``_demo/config.py``): ``standard`` (the paper's 10% poisoning, 3 epochs), ``strong``
   (same data, 10 epochs at 3x the lr) and ``heavy`` (25% poisoning, 10 epochs). The default runs
   ``standard`` and ``strong`` side by side: under the standard attack most defenses look alike.
3. SPARD fine-tunes on the same data with ``SPAGOptimizer``: after every step it checks the safety
   loss on a few safe examples that ``dpp_select`` picked (relevant to the attack *and* diverse)
   and projects the weights back when the loss exceeds tau, so the refusals can survive while
   the task is still learned.

Methods (``--methods``, default ``all``; details in ``_demo/methods.py``): ``sft`` (no defense);
the paper's baselines ``penalty`` (hinge penalty on the safety loss), ``safeinstr`` (safe rows mixed
into the data), ``lisa`` (alternating alignment/fine-tuning steps), ``safegrad`` (gradient surgery)
and ``ptst`` (safety system prompt at test time only), all on the same safe rows as ``spard``;
``spag_random`` and ``spag_top_relevance`` (SPAG with other safe-data choices), ``spard`` (SPAG +
DPP, library defaults), ``spard_relative_trust`` / ``spard_no_trust`` / ``spard_fixed_trust`` /
``spard_lr_trust`` (SPAG's trust region pinned to relative rho=0.5 / none / eta_safe=0.01 / the
learning rate) and ``spard_authors_code`` (the authors' released update, tolerance 0.1);
``guardspace`` (GuardSpace's null-space adapters instead of LoRA, built from the same safe rows) and
``guardspace_spard`` (those adapters trained with SPAG).

The synthetic "harmful" data only names placeholder tasks; no real harmful content is anywhere.
Writes ``results.json`` and (with matplotlib) ``results.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the demo's own helpers, examples/_demo

from _demo import evaluation  # noqa: E402
from _demo.alignment import aligned_model  # noqa: E402
from _demo.attack import run_attack  # noqa: E402
from _demo.config import ATTACKS, SMOKE, DemoConfig, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.methods import METHODS, resolve_methods  # noqa: E402
from _demo.report import format_table, write_plot, write_results  # noqa: E402
from _demo.selection import SafeSelector  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default="all",
        help="'all' or a comma-separated subset of: " + ", ".join(METHODS),
    )
    parser.add_argument(
        "--attacks",
        "--attack",
        default="standard,strong",
        help="comma-separated attack presets, shown side by side: " + ", ".join(ATTACKS),
    )
    parser.add_argument("--seed", type=int, default=0, help="one seed for data, weights and order")
    parser.add_argument("--out", type=Path, default=Path("spard_demo"), help="output folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="aligned-model cache (default OUT/cache)")
    parser.add_argument("--no-cache", action="store_true", help="retrain the aligned model")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for tests: seconds, not results")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model's matrices are so small that more threads "
        "mostly add synchronisation, and on a busy machine they fight over the cores)",
    )
    return parser.parse_args(argv)


def run_methods(names, aligned, data, config: DemoConfig, progress: bool) -> tuple[dict, dict]:
    """Stage 2 for every method on one attack: (results per method, safety loss per step)."""
    tok = data.tokenizer
    selector = None
    if any(METHODS[n].selection is not None for n in names):
        selector = SafeSelector(
            aligned, tok, data.safe_pool, data.finetune,
            ratio=config.safe_ratio, beta=config.beta, seed=config.seed,
        )
        print(f"  safe data: {selector.k} of {len(data.safe_pool)} pool examples per method")
    results, curves = {}, {}
    for name in names:
        method = METHODS[name]
        safe = selector.select(method.selection) if method.selection is not None else None
        outcome = run_attack(aligned, tok, data.finetune, method, safe, config, desc=name, progress=progress)
        results[name] = {
            "asr": evaluation.asr(outcome.model, tok, data.heldout_harmful, method.eval_prompt),
            "utility": evaluation.utility(outcome.model, tok, data.heldout_problems, method.eval_prompt),
            "projections": outcome.projections,
            "seconds": outcome.seconds,
        }
        curves[name] = outcome.safety_losses
        r = results[name]
        print(f"  {name:<20} ASR {r['asr']:.2f}  utility {r['utility']:.2f}  ({method.description})")
    return results, curves


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = resolve_methods(args.methods)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        print(f"error: unknown or no attack(s) {unknown}; choose from {', '.join(ATTACKS)}", file=sys.stderr)
        return 2
    attacks = list(dict.fromkeys(attacks))
    if args.threads < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    # The demo's own bars cover the long stages; the dependencies' bars and deprecation notices for
    # a one-second weight load would only bury the story.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    config = replace(SMOKE if args.smoke else DemoConfig(), seed=args.seed)
    progress = not args.no_progress
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir if args.cache_dir is not None else args.out / "cache"
    started = time.perf_counter()

    data = make_demo_data(with_attack(config, attacks[0]))
    tok = data.tokenizer
    print(
        f"data: {len(data.alignment)} alignment examples; {config.finetune_problems} fine-tuning problems; "
        f"safe pool {len(data.safe_pool)}; held-out {len(data.heldout_harmful)} harmful prompts and "
        f"{len(data.heldout_problems)} problems"
    )

    print("\n[stage 1] the aligned model")
    t0 = time.perf_counter()
    aligned, folder, cached = aligned_model(config, data, cache_dir, use_cache=not args.no_cache, progress=progress)
    print(f"  {'loaded from' if cached else 'trained and cached in'} {folder} ({time.perf_counter() - t0:.1f}s)")
    # Stage 1 and the held-out sets depend on the seed only, so one base serves every attack.
    base = {
        "asr": evaluation.asr(aligned, tok, data.heldout_harmful),
        "utility": evaluation.utility(aligned, tok, data.heldout_problems),
    }
    print(f"  aligned base: ASR {base['asr']:.2f}, utility {base['utility']:.2f}")

    per_attack, curves = {}, {}
    for attack in attacks:
        attack_config = with_attack(config, attack)
        data = make_demo_data(attack_config)
        print(
            f"\n[stage 2: {attack} attack] LoRA fine-tuning, {attack_config.harmful_ratio:.0%} harmful "
            f"({len(data.finetune)} rows), {attack_config.finetune_epochs} epochs at lr {attack_config.finetune_lr:g}"
        )
        results, curves[attack] = run_methods(names, aligned, data, attack_config, progress)
        per_attack[attack] = {"config": attack_config.to_dict(), "base": base, "methods": results}

    print("\n" + format_table(per_attack))
    run_config = config.to_dict() | {"methods": names, "attacks": attacks, "cache": str(folder), "cached": cached}
    print(f"\nwrote {write_results(args.out, per_attack, run_config)}")
    picture = write_plot(args.out, per_attack, curves, config.tau)
    if picture is None:
        print("matplotlib is not installed: skipped results.png (pip install 'spard[examples]')")
    else:
        print(f"wrote {picture}")
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
