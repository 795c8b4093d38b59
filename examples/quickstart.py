"""SPARD in a few minutes on a laptop CPU, offline: align, attack, defend; over several seeds.

    python examples/quickstart.py                 # sft, penalty, spard; seeds 0-4; standard and strong
    python examples/quickstart.py --methods all --attacks heavy --seeds 0-2

1. Stage 1 trains a tiny Llama from scratch into an *aligned* model: it solves word problems,
   answers benign how-to requests, and refuses placeholder harmful requests. For the default
   seeds the aligned models ship with the demo (``_demo/aligned``, checksummed): stage 1 is where
   floating-point differences between CPUs enter and grow (another vector width trains another
   aligned model), so shipping them makes these numbers the same on any machine. ``--no-cache``
   trains them here instead (cached in ``OUT/cache``); other seeds are trained and cached.
2. Stage 2 is the attack: LoRA fine-tuning on word problems with harmful questions answered with
   (placeholder) compliance. Plain fine-tuning (``sft``) loses the refusals. ``--attacks`` picks
   presets (``_demo/config.py``): ``standard`` (the paper's 10% poisoning, 3 epochs), ``strong``
   (same data, 10 epochs at 3x the lr) and ``heavy`` (25% poisoning, 10 epochs).
3. SPARD fine-tunes on the same data with ``SPAGOptimizer``: after every step it checks the safety
   loss on a few safe examples that ``dpp_select`` picked (relevant to the attack *and* diverse)
   and projects the weights back when the loss exceeds tau.

One seed is a coin toss: per seed, ASR is close to all-or-nothing and which way it falls depends
on the aligned model. So every method runs on every seed (the same aligned models and data, so the
comparison is paired), and the table gives per method and attack the mean ASR with its 95%
Student-t interval, the refusal probability (graded: the chance the answer opens with the refusal,
``_demo/evaluation.py``) and a verdict against ``sft`` and ``spard`` from the per-seed differences.

Methods (``--methods``, default ``sft,penalty,spard``; ``all`` runs all 16, details in
``_demo/methods.py``): ``sft`` (no defense); the paper's baselines ``penalty``, ``safeinstr``,
``lisa``, ``safegrad``, ``ptst``, all on the same safe rows as ``spard``; ``spag_random`` and
``spag_top_relevance``; ``spard`` (SPAG + DPP, library defaults); the trust-region ablations
``spard_relative_trust`` / ``spard_no_trust`` / ``spard_fixed_trust`` / ``spard_lr_trust``;
``spard_authors_code``; ``guardspace`` and ``guardspace_spard``.

The synthetic "harmful" data only names placeholder tasks; no real harmful content is anywhere.
Writes ``results.json`` and (with matplotlib) ``results.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from itertools import repeat
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the demo's own helpers, examples/_demo

from _demo import evaluation  # noqa: E402
from _demo.alignment import SHIPPED, aligned_model, weights_sha256  # noqa: E402
from _demo.attack import run_attack  # noqa: E402
from _demo.config import ATTACKS, SMOKE, DemoConfig, parse_presets, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.intervals import parse_seeds  # noqa: E402
from _demo.methods import METHODS, resolve_methods  # noqa: E402
from _demo.numerics import (  # noqa: E402
    NUMERICS,
    in_portable_process,
    portable_numerics,
    run_portable,
    use_portable_numerics,
)
from _demo.reference import compare_with_reference, load_reference  # noqa: E402
from _demo.report import format_table, summarize, write_plot, write_results  # noqa: E402
from _demo.selection import SafeSelector  # noqa: E402

#: The main job's compact comparison: no defense, the paper's hinge penalty, and SPARD.
DEFAULT_METHODS = ("sft", "penalty", "spard")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="'all' or a comma-separated subset of: " + ", ".join(METHODS),
    )
    parser.add_argument(
        "--attacks",
        "--attack",
        default="standard,strong",
        help="comma-separated attack presets, shown one after the other: " + ", ".join(ATTACKS),
    )
    parser.add_argument(
        "--seeds",
        "--seed",
        default="0-4",
        help="seeds, e.g. '0-4' or '0,3' (each: data, weights, order)",
    )
    parser.add_argument("--out", type=Path, default=Path("spard_demo"), help="output folder")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="aligned-model cache (default OUT/cache)"
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="train the aligned models here (no cache, no shipped ones)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes for tests: seconds, not results"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running seeds in parallel (each with --threads threads); the numbers do "
        "not depend on it",
    )
    parser.add_argument(
        "--numerics",
        choices=NUMERICS,
        default="native",
        help="'portable': the same bits on any x86-64-v3 CPU (a child process with the DEFAULT "
        "ATen kernels, one thread and BLAS-free products; _demo/numerics.py), at a cost in time; "
        "'native': this CPU's fastest kernels (default)",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="a results.json to compare with, seed by seed (exit 1 when a seed differs); "
        "benchmarks/results/quickstart_reference.json is the portable run of the defaults",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the model's matrices are so small that more threads "
        "mostly add synchronisation, and on a busy machine they fight over the cores)",
    )
    return parser.parse_args(argv)


def run_methods(names, aligned, data, config: DemoConfig, progress: bool) -> tuple[dict, dict]:
    """Stage 2 for every method on one attack and seed: (a row per method, safety loss per step)."""
    tok = data.tokenizer
    selector = None
    if any(METHODS[n].selection is not None for n in names):
        selector = SafeSelector.for_demo(aligned, data, config)
    rows, curves = {}, {}
    for name in names:
        method = METHODS[name]
        safe = None
        if method.selection is not None:
            safe = selector.select(method.selection, method.safe_ratio)
        outcome = run_attack(
            aligned, tok, data.finetune, method, safe, config, desc=name, progress=progress
        )
        scores = evaluation.evaluate_demo(outcome.model, data, method.eval_prompt)
        rows[name] = {
            "seed": config.seed,
            **{k: scores[k] for k in ("asr", "utility", "refusal_prob")},
            "projections": int(outcome.projections),
            "seconds": float(outcome.seconds),
        }
        curves[name] = outcome.safety_losses
    return rows, curves


def _check(args: argparse.Namespace) -> tuple[list[str], list[str], list[int]]:
    """The methods, attacks and seeds, or ValueError with what is wrong."""
    names = resolve_methods(args.methods)
    attacks = parse_presets(args.attacks, ATTACKS, "attack(s)")
    if args.threads < 1 or args.workers < 1:
        raise ValueError("--threads and --workers must be at least 1")
    return names, attacks, parse_seeds(args.seeds)


def run_seed(
    seed, names, attacks, base_config, cache_dir, args
) -> tuple[dict, dict, dict, Path, bool]:
    """Stage 1 and every (attack, method) for one seed: base row, rows[attack][method], curves[attack]."""
    config = replace(base_config, seed=seed)
    data = make_demo_data(with_attack(config, attacks[0]))
    t0 = time.perf_counter()
    aligned, folder, loaded = aligned_model(
        config,
        data,
        cache_dir,
        use_cache=not args.no_cache,
        shipped=True,
        progress=not args.no_progress,
        numerics=args.numerics,
    )
    scores = evaluation.evaluate_demo(aligned, data)
    base = {"seed": seed, **{k: scores[k] for k in ("asr", "utility", "refusal_prob")}}
    source = "shipped" if folder.parent == SHIPPED else "cached" if loaded else "trained"
    print(
        f"seed {seed}: aligned model {source} ({time.perf_counter() - t0:.1f}s), base ASR {base['asr']:.2f}"
    )
    rows, curves = {}, {}
    for attack in attacks:
        attack_config = with_attack(config, attack)
        rows[attack], curves[attack] = run_methods(
            names, aligned, make_demo_data(attack_config), attack_config, not args.no_progress
        )
        print(
            "  "
            + attack
            + ": "
            + ", ".join(f"{n} {r['asr']:.2f}" for n, r in rows[attack].items())
            + " (ASR)"
        )
    return base, rows, curves, folder, loaded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names, attacks, seeds = _check(args)
        reference = None if args.reference is None else load_reference(args.reference)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.numerics == "portable":
        if not in_portable_process():  # ATen reads its kernel setting once: a fresh process
            return run_portable([__file__, *(sys.argv[1:] if argv is None else argv)])
        with portable_numerics():
            return _run(args, names, attacks, seeds, reference)
    torch.set_num_threads(args.threads)
    return _run(args, names, attacks, seeds, reference)


def _init_worker(numerics: str, threads: int) -> None:
    """A seed worker: the parent's numerics (a portable parent's environment is inherited)."""
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    if numerics == "portable":
        use_portable_numerics()
    else:
        torch.set_num_threads(threads)


def _each_seed(seeds, names, attacks, base_config, cache_dir, args):
    """:func:`run_seed` for every seed, in order: here, or in ``args.workers`` processes."""
    if args.workers == 1 or len(seeds) == 1:
        for seed in seeds:
            yield run_seed(seed, names, attacks, base_config, cache_dir, args)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(args.workers, len(seeds)), context, _init_worker, (args.numerics, args.threads)
    ) as pool:
        yield from pool.map(
            run_seed, seeds, *(repeat(x) for x in (names, attacks, base_config, cache_dir, args))
        )


def _run(
    args: argparse.Namespace,
    names: list[str],
    attacks: list[str],
    seeds: list[int],
    reference: dict | None,
) -> int:
    """The demo proper, in this process's numerics: every seed, the table and the files, and the
    comparison with the ``reference`` run when one was given."""
    # The demo's own bars cover the long stages; the dependencies' bars and deprecation notices for
    # a one-second weight load would only bury the story.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    base_config = SMOKE if args.smoke else DemoConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir if args.cache_dir is not None else args.out / "cache"
    started = time.perf_counter()
    print(
        f"methods {', '.join(names)}; attacks {', '.join(attacks)}; seeds {', '.join(map(str, seeds))}"
    )
    bases, rows, curves, folders, loaded = (
        [],
        {a: {n: [] for n in names} for a in attacks},
        {},
        [],
        [],
    )
    for base, per_attack, seed_curves, folder, was_loaded in _each_seed(
        seeds, names, attacks, base_config, cache_dir, args
    ):
        bases.append(base)
        folders.append(str(folder))
        loaded.append(was_loaded)
        for attack in attacks:
            for name in names:
                rows[attack][name].append(per_attack[attack][name])
            curves.setdefault(attack, seed_curves[attack])  # the first seed's curves
    base_summary = summarize({"base": bases})["base"]
    base_summary = {k: base_summary[k] for k in ("asr", "utility", "refusal_prob", "seeds")}
    results = {
        a: {
            "config": {
                k: v for k, v in with_attack(base_config, a).to_dict().items() if k != "seed"
            }
            | {"seeds": seeds},
            "base": base_summary,
            "methods": summarize(rows[a]),
        }
        for a in attacks
    }
    print("\n" + format_table(results))
    run_config = base_config.to_dict() | {
        "seeds": seeds,
        "methods": names,
        "attacks": attacks,
        "numerics": args.numerics,
        "cache": folders,
        "cached": loaded,
        "aligned_sha256": [weights_sha256(Path(f)) for f in folders],
    }
    run_config.pop("seed")
    path = write_results(args.out, results, run_config)
    print(f"\nwrote {path}")
    picture = write_plot(args.out, results, curves, base_config.tau)
    if picture is None:
        print("matplotlib is not installed: skipped results.png (pip install 'spard[examples]')")
    else:
        print(f"wrote {picture}")
    print(f"total {time.perf_counter() - started:.0f}s")
    if reference is None:
        return 0
    lines, matched = compare_with_reference(json.loads(path.read_text()), reference)
    print(f"\ncompared with {args.reference}:\n" + "\n".join("  " + line for line in lines))
    print("reproduced exactly" if matched else "NOT reproduced: see the seeds that differ")
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
