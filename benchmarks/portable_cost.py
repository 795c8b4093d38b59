"""What portable numerics cost in time: the same quickstart run, native and portable, interleaved.

    python benchmarks/portable_cost.py                     # 3 pairs: seed 0, sft and spard, standard
    python benchmarks/portable_cost.py --pairs 5 --methods sft,spard,spard_repeated

Each pair runs ``examples/quickstart.py`` twice in fresh processes, once with ``--numerics native``
and once with ``--numerics portable``, in alternating order, on the shipped aligned models (stage
1 is loaded, so the ratio is stage 2's: fine-tuning, SPAG, selection and evaluation). A separate
``--no-cache`` pair times stage 1 too. The ratio is taken per pair, so a machine that is busy for a
while slows both sides of the same pair; the median of the pairs is reported. Writes
``benchmarks/results/portable_cost.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from _demo.environment import numeric_environment  # noqa: E402
from spard_io import write_atomic  # noqa: E402


def _timed(numerics: str, args: argparse.Namespace, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--numerics",
            numerics,
            "--seeds",
            args.seeds,
            "--methods",
            args.methods,
            "--attacks",
            args.attacks,
            "--no-progress",
            "--out",
            out,
            *extra,
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def _pairs(args: argparse.Namespace, count: int, extra: list[str]) -> list[tuple[float, float]]:
    pairs = []
    for i in range(count):
        order = ("native", "portable") if i % 2 == 0 else ("portable", "native")
        times = {n: _timed(n, args, extra) for n in order}
        pairs.append((times["native"], times["portable"]))
        print(f"pair {i}: native {times['native']:.0f}s, portable {times['portable']:.0f}s")
    return pairs


def _row(label: str, pairs: list[tuple[float, float]]) -> str:
    ratios = [p / n for n, p in pairs]
    return (
        f"| {label} | {len(pairs)} | {statistics.median(n for n, _ in pairs):.0f} | "
        f"{statistics.median(p for _, p in pairs):.0f} | {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="sft,spard")
    parser.add_argument("--attacks", default="standard")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        print("error: --pairs must be at least 1", file=sys.stderr)
        return 2
    stage_two = _pairs(args, args.pairs, [])
    both = _pairs(args, 1, ["--no-cache"])
    env = numeric_environment()
    lines = [
        "# The cost of portable numerics",
        "",
        f"`python benchmarks/portable_cost.py --pairs {args.pairs} --seeds {args.seeds} "
        f"--methods {args.methods} --attacks {args.attacks}`: wall time of the whole quickstart "
        "process, native and portable interleaved; the ratio is per pair (median, range).",
        f"Machine: {env['cpu']}, {env['capability']} kernels natively, torch {env['torch']}, "
        f"Python {env['python']}, {os.cpu_count()} cores.",
        "",
        "| what | pairs | native s | portable s | portable / native |",
        "| --- | --- | --- | --- | --- |",
        _row("stage 2 (shipped aligned models)", stage_two),
        _row("stages 1 and 2 (`--no-cache`)", both),
        "",
    ]
    path = args.out / "portable_cost.md"
    text = "\n".join(lines).encode()
    write_atomic(path, lambda handle: handle.write(text))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
