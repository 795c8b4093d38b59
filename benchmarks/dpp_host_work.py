"""Host-side work per pick of the torch backend's greedy, at two pool sizes N.

On an accelerator the host only issues the per-pick work: the pass and the O(N) bookkeeping run
on the device (dpp_select/device_pass.py). What the host itself spends per pick is the Python
code, the dispatch of a fixed number of tensor operations, and the O(d + contenders) transfers;
none of it should grow with N. This CPU-only benchmark measures exactly that part:

* the pool at the large N is the pool at the small N plus rows that never contend (weight 1e-4
  against >= 0.5), so both runs make identical picks, contenders and float64 re-scorings and
  differ only in N;
* the selection runs under ``cProfile``; the host time is the own time of every Python function
  (the interpreter's work), which excludes every C call: the tensor operations, i.e. all the
  work a device would do (the pass ``X @ a`` included). What the host spends dispatching those
  operations is a fixed cost per call; the number of C calls per pick is reported for both
  sizes and must be equal. (Wall time less the operations' time is no measure on a shared
  machine: descheduling grows with the O(N) device work that the CPU stands in for here);
* the Python bytecode instructions per pick (``sys.settrace`` opcode events) and the C calls
  per pick, counts free of timing noise: equal at both sizes means the host's work does not
  depend on N. On this CPU the time of those same instructions can still grow with N, because
  the O(N) tensor work that the CPU does in the device's place evicts the interpreter from the
  caches between them; on an accelerator that work runs elsewhere;
* per pick = (host time at k picks - host time at 1 pick) / (k - 1), so the one-off setup
  (row norms, weights, copies to the device, all chunked by design) cancels; each figure is the
  median of five pairs of runs.

Acceptance: the per-pick host time at N = 1e6 within 1.2x of N = 1e5.

Usage: python benchmarks/dpp_host_work.py [--small 100000] [--large 1000000] [--d 64] [--k 40]
       [--out benchmarks/results/dpp_host_work.md]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
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


def host_seconds(emb: torch.Tensor, q: np.ndarray, k: int) -> tuple[float, int, np.ndarray]:
    """Seconds spent in Python code during one selection (``cProfile``'s own time of every
    Python function, which excludes the C calls: tensor operations, NumPy), the number of C
    calls, and the picks."""
    profiler = cProfile.Profile()
    res = profiler.runcall(
        greedy_dpp_result, emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch"
    )
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, ...)
    python = sum(v[2] for key, v in stats.items() if key[0] != "~")
    c_calls = sum(v[1] for key, v in stats.items() if key[0] == "~")
    return python, c_calls, res.indices


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


def per_pick(emb: torch.Tensor, q: np.ndarray, k: int, repeats: int = 5) -> dict:
    """Python seconds and C calls per pick, setup cancelled (module docstring): the
    median over ``repeats`` pairs of runs (k picks, then 1 pick)."""
    host_seconds(emb, q, k)  # warm-up: lazy imports, allocator, profiler
    diffs, ops = [], []
    for _ in range(repeats):
        full, one = host_seconds(emb, q, k), host_seconds(emb, q, 1)
        diffs.append((full[0] - one[0]) / (k - 1))
        ops.append((full[1] - one[1]) / (k - 1))
    return {
        "host_per_pick": float(np.median(diffs)),
        "ops_per_pick": float(np.median(ops)),
        "opcodes_per_pick": (opcodes(emb, q, k) - opcodes(emb, q, 1)) / (k - 1),
        "picks": full[2],
    }


def measure(small: int, large: int, d: int, k: int) -> dict:
    """Both sizes, their picks checked equal; the ratio large / small of host time per pick."""
    cells = {n: per_pick(emb, q, k) for n, (emb, q) in pools(small, large, d).items()}
    if not np.array_equal(cells[small]["picks"], cells[large]["picks"]):
        raise RuntimeError(
            "the two pools selected different items; the non-contending rows "
            "contended (raise d or lower their weight)"
        )
    few, many = cells[small], cells[large]
    return {
        "small": small,
        "large": large,
        "d": d,
        "k": k,
        "host_small": few["host_per_pick"],
        "host_large": many["host_per_pick"],
        "ops_small": few["ops_per_pick"],
        "ops_large": many["ops_per_pick"],
        "opcodes_small": few["opcodes_per_pick"],
        "opcodes_large": many["opcodes_per_pick"],
        "ratio": many["host_per_pick"] / few["host_per_pick"],
    }


def markdown(r: dict) -> list[str]:
    verdict = "within" if r["ratio"] <= 1.2 else "NOT within"
    return [
        "| N | Python time per pick | Python opcodes per pick | C calls (tensor operations "
        "included) per pick |",
        "|---|---|---|---|",
        f"| {r['small']:,} | {r['host_small'] * 1e6:.0f} us | {r['opcodes_small']:.1f} | "
        f"{r['ops_small']:.1f} |",
        f"| {r['large']:,} | {r['host_large'] * 1e6:.0f} us | {r['opcodes_large']:.1f} | "
        f"{r['ops_large']:.1f} |",
        "",
        f"Ratio N={r['large']:,} / N={r['small']:,}: **{r['ratio']:.3f}** ({verdict} the 1.2x "
        f"acceptance bound); d = {r['d']}, k = {r['k']}, identical picks at both sizes.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps the runs comparable
    load = os.getloadavg()[0]
    r = measure(args.small, args.large, args.d, args.k)
    lines = [
        "# Host-side work per pick, torch backend (CPU)",
        "",
        f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average "
        f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at end), torch {torch.__version__}, "
        "one torch thread. How it is measured: see the docstring of "
        "`benchmarks/dpp_host_work.py` (cProfile's own time of the Python functions, "
        "which excludes the tensor operations; setup cancelled; identical picks at both "
        "sizes).",
        "",
    ] + markdown(r)
    write_atomic(args.out, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(markdown(r)))


if __name__ == "__main__":
    main()
