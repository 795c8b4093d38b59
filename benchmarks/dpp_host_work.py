"""Host-side work per pick of the torch backend's greedy, at two pool sizes N.

On an accelerator the host only issues the per-pick work: the pass and the O(N) bookkeeping run
on the device (dpp_select/engine/device_pass.py). What the host itself spends per pick is the Python
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
device's O(N) work, and that work streams the pool through the caches the interpreter runs from
(256 MB per pass at N = 1e6, d = 64; 26 MB at 1e5), so the same instructions find a cold cache at
one size and a warm one at the other; every function slows alike, ``extend_basis`` (O(k d), no
pool data) included. On an accelerator that work runs elsewhere. The benchmark therefore also
times a cache-equalised run: after every pass, at both sizes, the same 512 MB buffer is streamed
(a C call, so not counted), so the interpreter finds the same cold cache whatever N; what is left
of the ratio is what depends on N (the bookkeeping's O(N) operations between Python statements
still evict the small caches more at the larger N). The wrapper that streams it adds one Python
call and one C call per pick, at both sizes.

Acceptance: the per-pick host time at N = 1e6 within 1.2x of N = 1e5.

Usage: python benchmarks/dpp_host_work.py [--small 100000] [--large 1000000] [--d 64] [--k 40]
       [--ballast-mb 512] [--out benchmarks/results/dpp_host_work.md]
"""

from __future__ import annotations

import argparse
import contextlib
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

from dpp_select.engine.backends import TorchPass  # noqa: E402
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


@contextlib.contextmanager
def cache_equalised(megabytes: int):
    """Stream the same ``megabytes`` buffer after every pass (``TorchPass.project_device``), so
    that the interpreter finds an equally cold cache at every N; ``megabytes = 0``: unchanged."""
    if megabytes <= 0:
        yield
        return
    ballast = torch.ones(megabytes << 18)  # float32: 4 bytes per element
    project = TorchPass.project_device

    def project_then_stream(self, a):
        out = project(self, a)
        ballast.sum()
        return out

    TorchPass.project_device = project_then_stream
    try:
        yield
    finally:
        TorchPass.project_device = project


def measure(small: int, large: int, d: int, k: int, ballast_mb: int = 0) -> dict:
    """Both sizes, their picks checked equal; the ratio large / small of host time per pick."""
    with cache_equalised(ballast_mb):
        cells = {n: per_pick(emb, q, k) for n, (emb, q) in pools(small, large, d).items()}
    if not np.array_equal(cells[small]["picks"], cells[large]["picks"]):
        raise RuntimeError(
            "the two pools selected different items; the non-contending rows "
            "contended (raise d or lower their weight)"
        )
    return {
        "mode": f"cache-equalised ({ballast_mb} MB)" if ballast_mb > 0 else "as is",
        "d": d,
        "k": k,
        "cells": cells,
        "ratio": cells[large]["host_per_pick"] / cells[small]["host_per_pick"],
    }


def markdown(results: list[dict]) -> list[str]:
    lines = [
        "| run | N | Python time per pick | Python opcodes per pick | C calls per pick "
        "(tensor operations included) | elements brought to the host per pick |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for n, c in r["cells"].items():
            lines.append(
                f"| {r['mode']} | {n:,} | {c['host_per_pick'] * 1e6:.0f} us | "
                f"{c['opcodes_per_pick']:.1f} | {c['ops_per_pick']:.1f} | "
                f"{c['to_host_per_pick']:.1f} |"
            )
    lines.append("")
    for r in results:
        small, large = r["cells"]
        verdict = "within" if r["ratio"] <= 1.2 else "NOT within"
        lines.append(
            f"- {r['mode']}: time ratio N={large:,} / N={small:,} **{r['ratio']:.3f}** "
            f"({verdict} 1.2x); d = {r['d']}, k = {r['k']}, identical picks at both sizes."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=40, help="picks; keep k < d (module docstring)")
    parser.add_argument(
        "--ballast-mb", type=int, default=512, help="buffer streamed by the cache-equalised run"
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps the runs comparable
    load = os.getloadavg()[0]
    results = [
        measure(args.small, args.large, args.d, args.k, ballast) for ballast in (0, args.ballast_mb)
    ]
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
