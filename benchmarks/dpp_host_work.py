"""Host-side work per pick of the torch backend's greedy, at two pool sizes N.

On an accelerator the host only issues the per-pick work: the pass and the O(N) bookkeeping run
on the device (dpp_select/device_pass.py). What the host itself spends per pick is the Python
code, the dispatch of a fixed number of tensor operations, and the O(d + contenders) transfers;
none of it should grow with N. This CPU-only benchmark measures exactly that part:

* the pool at the large N is the pool at the small N plus rows that never contend (weight 1e-4
  against >= 0.5, and k < d so the real rows keep a residual), so both runs make identical
  picks, contenders and float64 re-scorings and differ only in N;
* the selection runs under ``cProfile``. The host time per pick is the own time of the Python
  functions that run once per pick (those called more often in a k-pick run than in a 1-pick
  run), which excludes every C call: the tensor operations, i.e. all the work a device would do
  (the pass ``X @ a`` included). The setup (row norms, weights, copies to the device) runs in
  functions called once whatever k, so it drops out exactly instead of cancelling with its
  timing noise. Per pick = (k-pick run - 1-pick run) / (k - 1); each figure is the median of
  five pairs of runs;
* three counts free of timing noise: Python bytecode instructions (``sys.settrace`` opcode
  events), C calls (each tensor operation is one, and costs the host a fixed dispatch), and tensor
  elements brought to the host (``Tensor.cpu``). Equal at both sizes means the host's work does
  not depend on N.

Why the time can still grow with N on a CPU when the counts do not: here the CPU also does the
device's O(N) work, and that work streams the pool through the caches the interpreter runs from.
With d = 64 the pool at N = 1e6 (256 MB) exceeds the last-level cache and at N = 1e5 it does not,
so the same instructions run from memory at one size and from cache at the other; every function
slows alike, ``extend_basis`` (O(k d), no pool data) included. On an accelerator that work runs
elsewhere. ``--shapes`` therefore also measures a narrower pool (d = 32) whose state at N = 1e6
stays within a large last-level cache at both sizes, which isolates the dependence on N.

Acceptance: the per-pick host time at N = 1e6 within 1.2x of N = 1e5.

Usage: python benchmarks/dpp_host_work.py [--small 100000] [--large 1000000]
       [--shapes 64:40,32:24] [--out benchmarks/results/dpp_host_work.md]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpp_select.greedy import greedy_dpp_result  # noqa: E402
from spard_io import write_atomic  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dpp_host_work.md")


def pools(small: int, large: int, d: int, seed: int = 0) -> dict[int, tuple]:
    """The small pool, and the same rows followed by ``large - small`` non-contending rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(large, d)).astype(np.float32)
    q = np.concatenate([rng.uniform(0.5, 1.0, small), np.full(large - small, 1e-4)])
    return {small: (torch.from_numpy(x[:small]), q[:small]), large: (torch.from_numpy(x), q)}


def profile(emb: torch.Tensor, q: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """``cProfile``'s statistics of one selection of ``k`` items, and the picks:
    (file, line, name) -> (primitive calls, calls, own time, ...)."""
    profiler = cProfile.Profile()
    res = profiler.runcall(
        greedy_dpp_result, emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch"
    )
    return pstats.Stats(profiler).stats, res.indices


def per_pick_split(many: dict, one: dict, k: int) -> tuple[float, float]:
    """Python seconds and C calls per pick from the statistics of a ``k``-pick and a 1-pick run.

    Only functions called more often in the ``k``-pick run count: the per-pick code. The setup
    (row norms, weights, copies to the device; its functions run once per selection whatever k)
    drops out exactly rather than cancelling with its timing noise. A Python function's own time
    excludes every C call it makes (the tensor operations, i.e. the device's work)."""
    python = c_calls = 0.0
    for key, row in many.items():
        before = one.get(key, (0, 0, 0.0))
        if row[1] <= before[1]:
            continue
        if key[0] == "~":
            c_calls += row[1] - before[1]
        else:
            python += row[2] - before[2]
    return python / (k - 1), c_calls / (k - 1)


def opcodes(emb: torch.Tensor, q: np.ndarray, k: int) -> int:
    """Python bytecode instructions executed during one selection: the interpreter's work as a
    count, free of timing noise."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        greedy_dpp_result(emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch")
    finally:
        sys.settrace(None)
    return count


def host_elements(emb: torch.Tensor, q: np.ndarray, k: int) -> int:
    """Tensor elements brought to the host (``Tensor.cpu``, the only way the greedy reads a
    device value) during one selection of ``k`` items."""
    count = 0
    cpu = torch.Tensor.cpu

    def counted(tensor, *args, **kwargs):
        nonlocal count
        count += tensor.numel()
        return cpu(tensor, *args, **kwargs)

    torch.Tensor.cpu = counted
    try:
        greedy_dpp_result(emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch")
    finally:
        torch.Tensor.cpu = cpu
    return count


def per_pick(emb: torch.Tensor, q: np.ndarray, k: int, repeats: int = 5) -> dict:
    """Python seconds and C calls per pick (``per_pick_split``): the median over ``repeats``
    pairs of runs (k picks, then 1 pick)."""
    profile(emb, q, k)  # warm-up: lazy imports, allocator, profiler
    seconds, calls = [], []
    for _ in range(repeats):
        (many, picks), (one, _) = profile(emb, q, k), profile(emb, q, 1)
        python, c_calls = per_pick_split(many, one, k)
        seconds.append(python)
        calls.append(c_calls)
    return {
        "host_per_pick": float(np.median(seconds)),
        "ops_per_pick": float(np.median(calls)),
        "opcodes_per_pick": (opcodes(emb, q, k) - opcodes(emb, q, 1)) / (k - 1),
        "to_host_per_pick": (host_elements(emb, q, k) - host_elements(emb, q, 1)) / (k - 1),
        "picks": picks,
    }


def measure(small: int, large: int, d: int, k: int) -> dict:
    """Both sizes, their picks checked equal; the ratio large / small of host time per pick."""
    cells = {n: per_pick(emb, q, k) for n, (emb, q) in pools(small, large, d).items()}
    if not np.array_equal(cells[small]["picks"], cells[large]["picks"]):
        raise RuntimeError(
            "the two pools selected different items; the non-contending rows "
            "contended (raise d or lower their weight)"
        )
    return {
        "d": d,
        "k": k,
        "cells": cells,
        "ratio": cells[large]["host_per_pick"] / cells[small]["host_per_pick"],
    }


def markdown(results: list[dict]) -> list[str]:
    lines = [
        "| d | k | N | Python time per pick | Python opcodes per pick | C calls per pick "
        "(tensor operations included) | elements brought to the host per pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for n, c in r["cells"].items():
            lines.append(
                f"| {r['d']} | {r['k']} | {n:,} | {c['host_per_pick'] * 1e6:.0f} us | "
                f"{c['opcodes_per_pick']:.1f} | {c['ops_per_pick']:.1f} | "
                f"{c['to_host_per_pick']:.1f} |"
            )
    lines.append("")
    for r in results:
        small, large = r["cells"]
        verdict = "within" if r["ratio"] <= 1.2 else "NOT within"
        lines.append(
            f"- d = {r['d']}, k = {r['k']}: time ratio N={large:,} / N={small:,} "
            f"**{r['ratio']:.3f}** ({verdict} 1.2x); identical picks at both sizes."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument(
        "--shapes",
        default="64:40,32:24",
        help="comma-separated d:k pairs (k < d, so that the non-contending rows never contend)",
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps the runs comparable
    load = os.getloadavg()[0]
    shapes = [tuple(int(v) for v in pair.split(":")) for pair in args.shapes.split(",")]
    results = [measure(args.small, args.large, d, k) for d, k in shapes]
    lines = [
        "# Host-side work per pick, torch backend (CPU)",
        "",
        f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()} ({_cache_sizes()}), {os.cpu_count()} CPUs (load average "
        f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at end), torch {torch.__version__}, "
        "one torch thread. How it is measured, and why the time (unlike the counts) can grow "
        "with N on a CPU: see the docstring of `benchmarks/dpp_host_work.py`.",
        "",
    ] + markdown(results)
    write_atomic(args.out, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(markdown(results)))


def _cache_sizes() -> str:
    """The CPU's cache sizes as lscpu reports them (Linux), or 'cache sizes unknown'."""
    names = ("L2 cache", "L3 cache")
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "cache sizes unknown"
    found = [" ".join(line.split()) for line in out.splitlines() if line.startswith(names)]
    return "; ".join(found) or "cache sizes unknown"


if __name__ == "__main__":
    main()
