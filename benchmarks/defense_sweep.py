"""Every demo defense under every attack preset over many seeds and numeric environments.

One seed of the offline demo (``examples/quickstart.py``) cannot tell the defenses apart, and one
machine cannot either: the same seed gives a different aligned model under other vector kernels
(issue "Evidence a user can reproduce"), so a machine is in effect another draw of stage 1. This
sweep runs the grid methods x attacks x seeds x environments (default: every method of the demo's
``METHODS``, the three presets of ``ATTACKS``, seeds 0-4, the default kernels) and records per
cell ASR, utility and the graded refusal probability (``_demo/evaluation.py``), the per-prompt
verdicts, the full config and the environment (``_demo/environment.py``): what a re-run needs.

    python benchmarks/defense_sweep.py                      # the default grid
    python benchmarks/defense_sweep.py --methods sft,spard --attacks heavy --seeds 0-19 \
        --environments default,avx2 --workers 2             # both kernel settings, one worker each

``--environments`` takes ``native`` (no ``ATEN_CPU_CAPABILITY``) and kernel names such as
``avx2``; each gets its own worker pool started with that setting, its own aligned-model cache
(``CACHE_DIR/<environment key>``), and ``--workers`` is split between them, so with the cells in
seed-major order both environments advance evenly.

Resumable and safe to run twice at once: every finished cell is merged into
``OUT/defense_sweep.json`` under an exclusive lock on ``defense_sweep.json.lock`` (re-read, merge,
atomic write), under the key ``method|attack|seed|config-hash|environment-key`` (``sweep_grid.py``); a cell whose key
is already there is never recomputed. The config hash covers the attack's full ``DemoConfig``, the
aligned model's cache key and the method's definition (its options included), so a changed
setting makes new cells instead of reusing stale ones. The file is validated before anything runs;
one it cannot read is reported and never overwritten. Then it writes ``defense_sweep.md`` and
``defense_sweep.png`` (``defense_sweep_report.py``, which also runs alone on a partial file).

The interval: a seed redraws the data, the aligned model's weights and the training order, so the
seeds are independent replications of the whole pipeline; the 95% interval of the mean is
Student's t over seeds. Differences between methods are paired by seed and environment (same
aligned model and data). See ``defense_sweep_report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the demo's modules, examples/_demo

from _demo import evaluation  # noqa: E402
from _demo.alignment import (  # noqa: E402
    aligned_model,
    weights_sha256,  # noqa: E402
)
from _demo.attack import run_attack  # noqa: E402
from _demo.config import ATTACKS, RECIPES, parse_presets  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.environment import environment_key, numeric_environment  # noqa: E402
from _demo.intervals import parse_seeds  # noqa: E402
from _demo.methods import METHODS, resolve_methods  # noqa: E402
from _demo.numerics import (  # noqa: E402
    NUMERICS,
    in_portable_process,
    use_portable_numerics,
)
from _demo.selection import SafeSelector  # noqa: E402
from spard_io import discard_leftovers, exclusive_lock, write_atomic  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from defense_sweep_report import load_state, write_report  # noqa: E402
from sweep_grid import cell_config, cell_key, environment_started, method_spec, probe_environment  # noqa: E402
from sweep_workers import WorkerDied, run_in_workers  # noqa: E402

__all__ = [
    "cell_key",
    "run_cell",
    "sweep",
    "probe_environment",
    "main",
]


# Per worker process: (attack, seed, smoke, recipe) -> data, aligned model, base metrics and the
# safe-data selector.
_CONTEXTS: dict[tuple[str, int, bool, str], dict[str, Any]] = {}
# The numerics this worker computes in (``_init_worker``).
_NUMERICS = {"setting": "native"}


def _context(
    attack: str, seed: int, smoke: bool, cache_dir: Path, recipe: str = "base"
) -> dict[str, Any]:
    key = (attack, seed, smoke, recipe)
    if key not in _CONTEXTS:
        config = cell_config(attack, seed, smoke, recipe)
        data = make_demo_data(config)
        aligned, folder, _ = aligned_model(
            config, data, cache_dir, progress=False, numerics=_NUMERICS["setting"]
        )
        base = evaluation.evaluate_demo(aligned, data)
        selector = SafeSelector.for_demo(aligned, data, config)
        _CONTEXTS[key] = {
            "config": config,
            "data": data,
            "aligned": aligned,
            "base": base,
            "selector": selector,
            "aligned_sha256": weights_sha256(folder),
        }
    return _CONTEXTS[key]


def run_cell(
    method: str,
    attack: str,
    seed: int,
    *,
    smoke: bool = False,
    cache_dir: Path,
    recipe: str = "base",
) -> dict[str, Any]:
    """One cell of the grid: the demo's stage 2 for one method, attack, seed and aligned-model
    recipe, evaluated in this process's environment and numerics, with what a re-run needs
    (config, method, environment, the aligned model's SHA-256, verdicts)."""
    started = time.perf_counter()
    ctx = _context(attack, seed, smoke, Path(cache_dir), recipe)
    config, data, m = ctx["config"], ctx["data"], METHODS[method]
    tok = data.tokenizer
    safe = None
    if m.selection is not None:
        safe = ctx["selector"].select(m.selection, m.safe_ratio)
    outcome = run_attack(
        ctx["aligned"], tok, data.finetune, m, safe, config, desc=method, progress=False
    )
    scores = evaluation.evaluate_demo(outcome.model, data, m.eval_prompt)
    cell = {
        "method": method,
        "attack": attack,
        "seed": seed,
        **scores,
        "projections": int(outcome.projections),
        "seconds": float(outcome.seconds),
        "cell_seconds": time.perf_counter() - started,
        "base": ctx["base"],
        "safety_losses": [float(f"{x:.5g}") for x in outcome.safety_losses],
        "config": config.to_dict(),
        "method_spec": method_spec(m),
        "environment": numeric_environment(),
        "numerics": _NUMERICS["setting"],
        "aligned_sha256": ctx["aligned_sha256"],
    }
    if recipe != "base":  # only when set, so the stored cells stay as they were
        cell["recipe"] = recipe
    return cell


def _work(args: tuple[str, str, str, int, bool, str, str]) -> tuple[str, dict[str, Any]]:
    key, method, attack, seed, smoke, cache_dir, recipe = args
    cell = run_cell(method, attack, seed, smoke=smoke, cache_dir=Path(cache_dir), recipe=recipe)
    return key, cell


def _init_worker(threads: int) -> None:
    """A cell worker: portable numerics when started in the portable environment (``environment_started``),
    else ``threads`` torch threads."""
    if in_portable_process():
        _NUMERICS["setting"] = "portable"
        use_portable_numerics()
    else:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a weight-loading bar per cell would bury the progress lines
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _merge(path: Path, cells: dict[str, dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """Under the lock: re-read ``path``, add ``cells`` and this ``run``'s record, write atomically.
    Cells another process stored meanwhile are kept; returns the merged state."""
    with exclusive_lock(path.with_name(path.name + ".lock")):
        discard_leftovers(path)  # of a merge killed between its write and its rename
        state = load_state(path)
        state["cells"].update(cells)
        state["runs"] = [r for r in state["runs"] if r.get("id") != run["id"]] + [dict(run)]
        state.pop("wall_seconds", None)  # superseded by the per-run records
        payload = (json.dumps(state, indent=1) + "\n").encode()
        write_atomic(path, lambda handle: handle.write(payload))
    return state


def _todo(
    methods, attacks, seeds, environments, smoke, cache_dir, cells, recipes=("base",)
) -> dict[str, list[tuple]]:
    """Per environment label, the missing cells as ``_work`` arguments, seed-major."""
    todo: dict[str, list[tuple]] = {}
    for label, env_key in environments.items():
        folder = str(Path(cache_dir) / env_key)  # an aligned model belongs to its environment
        numerics = "portable" if label == "portable" else "native"
        todo[label] = [
            (key, m, a, s, smoke, folder, r)
            for s in seeds
            for r in recipes
            for a in attacks
            for m in methods
            if (key := cell_key(m, a, s, env_key, smoke, r, numerics)) not in cells
        ]
    return todo


def sweep(
    methods: Sequence[str],
    attacks: Sequence[str],
    seeds: Sequence[int],
    *,
    out: Path,
    cache_dir: Path,
    environments: Sequence[str] = ("native",),
    smoke: bool = False,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    recipes: Sequence[str] = ("base",),
) -> dict[str, Any]:
    """Run every missing cell, merging each into ``out/defense_sweep.json`` as it finishes;
    returns the state. ``workers`` are split evenly between the ``environments`` (``portable``
    is the environment of portable numerics)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "defense_sweep.json"
    with exclusive_lock(path.with_name(path.name + ".lock")):
        state = load_state(path)  # validated before anything runs
    envs = {
        label: environment_key(probe_environment(label, 1 if label == "portable" else threads))
        for label in environments
    }
    todo = _todo(methods, attacks, seeds, envs, smoke, cache_dir, state["cells"], recipes)
    total = len(methods) * len(attacks) * len(seeds) * len(envs) * len(recipes)
    remaining = sum(map(len, todo.values()))
    _progress(
        progress,
        f"{total - remaining}/{total} cells already done, {remaining} to run ({', '.join(envs.values())})",
    )
    if not remaining:
        return state
    started = time.perf_counter()
    run = {
        "id": uuid.uuid4().hex,
        "cells": 0,
        "wall_seconds": 0.0,
        "workers": workers,
        "environments": list(envs.values()),
    }
    per_env = max(1, workers // len(envs))
    # Spawned workers start clean (their own kernels, one torch thread, their own per-seed context);
    # each starts under environment_started(label), so it inherits its environment's setting.
    groups = [(label, tasks, min(per_env, len(tasks))) for label, tasks in todo.items() if tasks]
    finished = run_in_workers(
        groups, _work, initializer=_init_worker, initargs=(threads,), started_in=environment_started
    )
    with contextlib.closing(finished):  # a failure here stops every worker
        for i, (key, cell) in enumerate(finished, 1):
            elapsed = time.perf_counter() - started
            run.update(cells=i, wall_seconds=elapsed)
            state = _merge(path, {key: cell}, run)
            _progress(
                progress,
                f"[{i}/{remaining}] {cell['method']} {cell['attack']} seed {cell['seed']} {cell['environment']['label']}: "
                f"ASR {cell['asr']:.2f} refusal {cell['refusal_prob']:.2f} utility {cell['utility']:.2f} "
                f"({cell['cell_seconds']:.0f}s); elapsed {elapsed:.0f}s, eta {elapsed / i * (remaining - i):.0f}s",
            )
    return state


def _progress(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stderr, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default="all",
        help="'all' or a comma-separated subset of: " + ", ".join(METHODS),
    )
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="comma-separated presets: " + ", ".join(ATTACKS),
    )
    parser.add_argument("--seeds", default="0-4", help="e.g. '0-4' or '0,1,5'")
    parser.add_argument(
        "--environments",
        default="native",
        help="comma-separated kernel settings: 'native' (ATEN_CPU_CAPABILITY unset) and/or e.g. 'avx2'",
    )
    parser.add_argument(
        "--numerics",
        choices=NUMERICS,
        default="native",
        help="'portable': every cell in the portable environment (the same bits on any x86-64-v3 "
        "CPU, _demo/numerics.py), instead of --environments",
    )
    parser.add_argument(
        "--recipes",
        default="base",
        help="comma-separated aligned-model recipes: " + ", ".join(RECIPES),
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("spard_demo") / "cache", help="aligned-model cache"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running cells in parallel (all environments)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes for tests: seconds, not results"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report-name",
        default="defense_sweep",
        help="file stem of the Markdown table and plot (the JSON is shared)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        methods = resolve_methods(args.methods)
        seeds = parse_seeds(args.seeds)
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown or not attacks:
            raise ValueError(f"unknown or no attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
        environments = list(
            dict.fromkeys(e.strip().lower() for e in args.environments.split(",") if e.strip())
        )
        if not environments:
            raise ValueError("--environments is empty; write e.g. 'native' or 'native,avx2'")
        if args.numerics == "portable":
            if environments != ["native"]:
                raise ValueError(
                    "--numerics portable fixes the kernels itself: leave out --environments"
                )
            environments = ["portable"]
        recipes = parse_presets(args.recipes, RECIPES, "recipe(s)")
        if args.workers < 1 or args.threads < 1:
            raise ValueError("--workers and --threads must be at least 1")
        sweep(
            methods,
            attacks,
            seeds,
            out=args.out,
            cache_dir=args.cache_dir,
            environments=environments,
            smoke=args.smoke,
            workers=args.workers,
            threads=args.threads,
            progress=not args.no_progress,
            recipes=recipes,
        )
    except (ValueError, WorkerDied) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for written in write_report(args.out / "defense_sweep.json", args.out / args.report_name):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
