"""Every demo defense under every attack preset over several seeds, with confidence intervals.

One seed of the offline demo (``examples/quickstart.py``) cannot tell the defenses apart: under
the standard attack most of them keep ASR near 0, and under stronger attacks the ranking of two
methods can flip from one seed to the next. This sweep runs the grid methods x attacks x seeds
(default: every method of the demo's ``METHODS``, the three presets of ``ATTACKS``, seeds 0-4) and
reports each method's mean and 95% confidence interval over seeds.

    python benchmarks/defense_sweep.py                      # the full default grid
    python benchmarks/defense_sweep.py --methods sft,spard --attacks heavy --seeds 0-2 --workers 2

Resumable: every finished cell is written at once (atomically) to
``benchmarks/results/defense_sweep.json`` under the key ``method|attack|seed|config-hash``, and a
cell whose key is already there is never recomputed. The config hash covers the attack's full
``DemoConfig`` and the aligned model's cache key (its settings and vocabulary), so a method added
to ``METHODS`` later only adds cells, while a changed setting makes new cells instead of mixing
old and new numbers. Then it writes ``defense_sweep.md`` (the table) and ``defense_sweep.png``.

The interval: a seed redraws the data, the aligned model's weights and the training order, so the
seeds are independent replications of the whole pipeline. With n = 5 such runs and an unknown
spread, the 95% interval of the mean is Student's t: mean +- t(0.975, n-1) * s / sqrt(n), s the
sample standard deviation. It covers seed-to-seed variation only; the evaluation sets are fixed
per seed (72 held-out harmful prompts, 200 problems). Differences between methods are paired by
seed (same aligned model and data), so the table of differences uses the t interval of the
per-seed differences, which is narrower than comparing two marginal intervals.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the demo's modules, examples/_demo

from _demo import evaluation  # noqa: E402
from _demo.alignment import aligned_model, cache_key  # noqa: E402
from _demo.attack import run_attack  # noqa: E402
from _demo.config import ATTACKS, SMOKE, DemoConfig, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.methods import METHODS, resolve_methods  # noqa: E402
from _demo.selection import SafeSelector  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from defense_sweep_report import write_markdown, write_plot  # noqa: E402

__all__ = ["cell_key", "run_cell", "sweep", "parse_seeds", "main"]


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` or ``"0,2,7"`` (or a mix) -> the seeds, in order, without duplicates."""
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
            raise ValueError(f"bad --seeds {spec!r}; write e.g. '0-4' or '0,1,5'") from None
    if not seeds:
        raise ValueError("--seeds is empty; write e.g. '0-4'")
    return list(dict.fromkeys(seeds))


def _config(attack: str, seed: int, smoke: bool) -> DemoConfig:
    return with_attack(replace(SMOKE if smoke else DemoConfig(), seed=seed), attack)


def cell_key(method: str, attack: str, seed: int, smoke: bool = False) -> str:
    """The resumption key: method, attack, seed and a hash of everything the cell's data and
    aligned model depend on."""
    return f"{method}|{attack}|{seed}|{_config_hash(attack, seed, smoke)}"


@functools.lru_cache(maxsize=None)
def _config_hash(attack: str, seed: int, smoke: bool) -> str:
    config = _config(attack, seed, smoke)
    payload = json.dumps({"config": config.to_dict(), "aligned": cache_key(config, make_demo_data(config))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


# Per process: (attack, seed, smoke) -> data, aligned model, base metrics and the safe-data selector.
_CONTEXTS: dict[tuple[str, int, bool], dict[str, Any]] = {}


def _context(attack: str, seed: int, smoke: bool, cache_dir: Path) -> dict[str, Any]:
    key = (attack, seed, smoke)
    if key not in _CONTEXTS:
        config = _config(attack, seed, smoke)
        data = make_demo_data(config)
        aligned, _, _ = aligned_model(config, data, cache_dir, progress=False)
        tok = data.tokenizer
        base = {
            "asr": evaluation.asr(aligned, tok, data.heldout_harmful),
            "utility": evaluation.utility(aligned, tok, data.heldout_problems),
        }
        selector = SafeSelector(
            aligned, tok, data.safe_pool, data.finetune, ratio=config.safe_ratio, beta=config.beta, seed=seed
        )
        _CONTEXTS[key] = {"config": config, "data": data, "aligned": aligned, "base": base, "selector": selector}
    return _CONTEXTS[key]


def run_cell(method: str, attack: str, seed: int, *, smoke: bool = False, cache_dir: Path) -> dict[str, Any]:
    """One cell of the grid: the demo's stage 2 for one method, attack and seed, evaluated."""
    started = time.perf_counter()
    ctx = _context(attack, seed, smoke, Path(cache_dir))
    config, data, m = ctx["config"], ctx["data"], METHODS[method]
    tok = data.tokenizer
    safe = ctx["selector"].select(m.selection) if m.selection is not None else None
    outcome = run_attack(ctx["aligned"], tok, data.finetune, m, safe, config, desc=method, progress=False)
    return {
        "method": method,
        "attack": attack,
        "seed": seed,
        "asr": evaluation.asr(outcome.model, tok, data.heldout_harmful, m.eval_prompt),
        "utility": evaluation.utility(outcome.model, tok, data.heldout_problems, m.eval_prompt),
        "projections": int(outcome.projections),
        "seconds": float(outcome.seconds),
        "cell_seconds": time.perf_counter() - started,
        "base": ctx["base"],
        "safety_losses": [float(f"{x:.5g}") for x in outcome.safety_losses],
    }


def _align(args: tuple[int, bool, str]) -> int:
    seed, smoke, cache_dir = args
    config = _config(next(iter(ATTACKS)), seed, smoke)  # stage 1 does not depend on the attack
    aligned_model(config, make_demo_data(config), Path(cache_dir), progress=False)
    return seed


def _work(args: tuple[str, str, str, int, bool, str]) -> tuple[str, dict[str, Any]]:
    key, method, attack, seed, smoke, cache_dir = args
    return key, run_cell(method, attack, seed, smoke=smoke, cache_dir=Path(cache_dir))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a weight-loading bar per cell would bury the progress lines
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)  # a crash mid-write never loses the cells already finished


def load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        state = json.loads(path.read_text())
        if "cells" not in state:
            raise ValueError(f"{path} is not a defense_sweep results file (no 'cells'); move it away")
        return state
    return {"cells": {}, "wall_seconds": 0.0, "runs": []}


def sweep(
    methods: Sequence[str],
    attacks: Sequence[str],
    seeds: Sequence[int],
    *,
    out: Path,
    cache_dir: Path,
    smoke: bool = False,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every missing cell, streaming each to ``out/defense_sweep.json``; returns the state."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "defense_sweep.json"
    state = load_state(path)
    prior_wall = state.get("wall_seconds", 0.0)
    started = time.perf_counter()
    todo = []
    for seed in seeds:
        for attack in attacks:
            for method in methods:
                key = cell_key(method, attack, seed, smoke)
                if key not in state["cells"]:
                    todo.append((key, method, attack, seed, smoke, str(cache_dir)))
    total = len(methods) * len(attacks) * len(seeds)
    done = total - len(todo)
    _progress(progress, f"{done}/{total} cells already done, {len(todo)} to run")
    if not todo:
        return state
    # This run's record is saved with every cell, so an interrupted run still shows its time.
    run = {"cells": 0, "wall_seconds": 0.0, "workers": workers}
    state.setdefault("runs", []).append(run)
    # Spawned workers: each starts clean (one torch thread, its own per-seed context), like a rerun.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(todo)), _init_worker, (threads,)) as pool:
        # Stage 1 first, one seed per worker, so two workers never train the same aligned model.
        need = sorted({t[3] for t in todo})
        for seed in pool.imap_unordered(_align, [(s, smoke, str(cache_dir)) for s in need]):
            _progress(progress, f"aligned model for seed {seed} ready ({time.perf_counter() - started:.0f}s)")
        cells_started = time.perf_counter()
        for i, (key, cell) in enumerate(pool.imap_unordered(_work, todo), start=1):
            elapsed = time.perf_counter() - started
            state["cells"][key] = cell
            state["wall_seconds"] = prior_wall + elapsed
            run.update(cells=i, wall_seconds=elapsed)
            _save(path, state)
            # Cells run in seed order, so this rate mixes the attacks' costs (a rough estimate).
            eta = (time.perf_counter() - cells_started) / i * (len(todo) - i)
            _progress(
                progress,
                f"[{done + i}/{total}] {cell['method']} {cell['attack']} seed {cell['seed']}: ASR {cell['asr']:.2f} "
                f"utility {cell['utility']:.2f} ({cell['cell_seconds']:.0f}s); elapsed {elapsed:.0f}s, eta {eta:.0f}s",
            )
    run["wall_seconds"] = time.perf_counter() - started
    state["wall_seconds"] = prior_wall + run["wall_seconds"]
    _save(path, state)
    return state


def _progress(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="'all' or a comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated presets: " + ", ".join(ATTACKS))
    parser.add_argument("--seeds", default="0-4", help="e.g. '0-4' or '0,1,5'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--cache-dir", type=Path, default=Path("spard_demo") / "cache", help="aligned-model cache")
    parser.add_argument("--workers", type=int, default=1, help="processes running cells in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for tests: seconds, not results")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report-name", default="defense_sweep", help="file stem of the Markdown table and plot (the JSON is shared)"
    )
    args = parser.parse_args(argv)
    try:
        methods = resolve_methods(args.methods)
        seeds = parse_seeds(args.seeds)
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown or not attacks:
            raise ValueError(f"unknown or no attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
        if args.workers < 1 or args.threads < 1:
            raise ValueError("--workers and --threads must be at least 1")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = sweep(
        methods, attacks, seeds, out=args.out, cache_dir=args.cache_dir, smoke=args.smoke,
        workers=args.workers, threads=args.threads, progress=not args.no_progress,
    )
    keys = [cell_key(m, a, s, args.smoke) for s in seeds for a in attacks for m in methods]
    cells = [state["cells"][k] for k in keys]
    command = " ".join(["python benchmarks/defense_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    md = write_markdown(args.out / f"{args.report_name}.md", cells, methods, attacks, seeds, state["runs"], command)
    print(f"wrote {args.out / 'defense_sweep.json'} and {md}")
    png = write_plot(args.out / f"{args.report_name}.png", cells, methods, attacks)
    print(f"wrote {png}" if png else "matplotlib is not installed: skipped defense_sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
