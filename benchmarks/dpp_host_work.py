"""Host-side work per pick of the torch backend's greedy, at two pool sizes N.

On an accelerator the host only issues the per-pick work: the pass and the O(N) bookkeeping run
on the device (dpp_select/device_pass.py). What the host itself spends per pick is the Python
code, the dispatch of a fixed number of tensor operations, and the O(d + contenders) transfers;
none of it should grow with N. This CPU-only benchmark measures exactly that part:

* the pool at the large N is the pool at the small N plus rows that never contend (weight 1e-4
  against >= 0.5), so both runs make identical picks, contenders and float64 re-scorings and
  differ only in N;
* the selection runs under ``torch.profiler`` (CPU); the host time is the wall time less the
  self time of every profiled tensor operation, i.e. less all the work that a device would do
  (the pass ``X @ a`` included) and its dispatch (about the same fixed number of operations at
  both sizes, also reported);
* per pick = (host time at k picks - host time at 1 pick) / (k - 1), so the one-off setup
  (row norms, weights, copies to the device, all chunked by design) cancels; each figure is the
  median of five pairs of runs.

Acceptance (issue 24): the per-pick host time at N = 1e6 within 1.2x of N = 1e5.

Usage: python benchmarks/dpp_host_work.py [--small 100000] [--large 1000000] [--d 64] [--k 40]
       [--out benchmarks/results/dpp_host_work.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpp_select.greedy import greedy_dpp_result  # noqa: E402
from spard_io import write_atomic  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "dpp_host_work.md")


def pools(small: int, large: int, d: int, seed: int = 0) -> dict[int, tuple]:
    """The small pool, and the same rows followed by ``large - small`` non-contending rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(large, d)).astype(np.float32)
    q = np.concatenate([rng.uniform(0.5, 1.0, small), np.full(large - small, 1e-4)])
    return {small: (torch.from_numpy(x[:small]), q[:small]), large: (torch.from_numpy(x), q)}


def host_seconds(emb: torch.Tensor, q: np.ndarray, k: int) -> tuple[float, int, np.ndarray]:
    """Host time of one selection (wall time less the profiled operations' self time), the
    number of profiled operations, and the picks."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        res = greedy_dpp_result(emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch")
        wall = time.perf_counter() - start
    events = prof.events()
    ops = sum(e.self_cpu_time_total for e in events) * 1e-6
    return wall - ops, len(events), res.indices


def per_pick(emb: torch.Tensor, q: np.ndarray, k: int, repeats: int = 5) -> dict:
    """Host seconds and profiled operations per pick, setup cancelled (module docstring): the
    median over ``repeats`` pairs of runs (k picks, then 1 pick)."""
    host_seconds(emb, q, k)  # warm-up: lazy imports, allocator, profiler
    diffs, ops = [], []
    for _ in range(repeats):
        full, one = host_seconds(emb, q, k), host_seconds(emb, q, 1)
        diffs.append((full[0] - one[0]) / (k - 1))
        ops.append((full[1] - one[1]) / (k - 1))
    return {"host_per_pick": float(np.median(diffs)), "ops_per_pick": float(np.median(ops)),
            "picks": full[2]}


def measure(small: int, large: int, d: int, k: int) -> dict:
    """Both sizes, their picks checked equal; the ratio large / small of host time per pick."""
    cells = {n: per_pick(emb, q, k) for n, (emb, q) in pools(small, large, d).items()}
    if not np.array_equal(cells[small]["picks"], cells[large]["picks"]):
        raise RuntimeError("the two pools selected different items; the non-contending rows "
                           "contended (raise d or lower their weight)")
    return {"small": small, "large": large, "d": d, "k": k,
            "host_small": cells[small]["host_per_pick"], "host_large": cells[large]["host_per_pick"],
            "ops_small": cells[small]["ops_per_pick"], "ops_large": cells[large]["ops_per_pick"],
            "ratio": cells[large]["host_per_pick"] / cells[small]["host_per_pick"]}


def markdown(r: dict) -> list[str]:
    verdict = "within" if r["ratio"] <= 1.2 else "NOT within"
    return [
        "| N | host time per pick | profiled operations per pick |", "|---|---|---|",
        f"| {r['small']:,} | {r['host_small'] * 1e6:.0f} us | {r['ops_small']:.1f} |",
        f"| {r['large']:,} | {r['host_large'] * 1e6:.0f} us | {r['ops_large']:.1f} |", "",
        f"Ratio N={r['large']:,} / N={r['small']:,}: **{r['ratio']:.3f}** ({verdict} the 1.2x "
        f"of issue 24); d = {r['d']}, k = {r['k']}, identical picks at both sizes.",
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
    lines = ["# Host-side work per pick, torch backend (CPU)", "",
             f"Finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average "
             f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at end), torch {torch.__version__}, "
             "one torch thread. How it is measured: see the docstring of "
             "`benchmarks/dpp_host_work.py` (wall time less the profiled tensor operations' "
             "self time, setup cancelled, identical picks at both sizes).", ""] + markdown(r)
    write_atomic(args.out, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(markdown(r)))


if __name__ == "__main__":
    main()
