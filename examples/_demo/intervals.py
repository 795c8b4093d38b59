"""Means over seeds with Student-t intervals, and the paired verdict between two methods.

A seed redraws the data, the aligned model's weights and the training order, so seeds are
independent replications of the whole pipeline; with a handful of them and an unknown spread the
95% interval of the mean is Student's t. Two methods run on the same seeds share aligned model and
data, so they are compared by the per-seed differences (paired), which is narrower than comparing
two marginal intervals. Shared by ``examples/quickstart.py`` and ``benchmarks/defense_sweep_report.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats

__all__ = ["t_interval", "verdict", "parse_seeds"]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t confidence interval of the mean of ``values``:
    mean +- t((1 + confidence) / 2, n - 1) * s / sqrt(n), s the sample standard deviation
    (n - 1 in the denominator). The half-width is NaN for a single value (no spread to estimate)."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return mean, math.nan
    s = statistics.stdev(values)
    return mean, float(stats.t.ppf((1 + confidence) / 2, n - 1)) * s / math.sqrt(n)


def verdict(differences: Sequence[float]) -> str:
    """``lower``/``higher`` when the 95% interval of the paired ``differences`` excludes 0, ``tie``
    when it contains 0, ``n<2`` when there is no interval yet."""
    if len(differences) < 2:
        return "n<2"
    mean, half = t_interval(differences)
    if half == 0.0 and mean == 0.0 or abs(mean) <= half:
        return "tie"
    return "lower" if mean < 0 else "higher"


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` or ``"0,2,7"`` (or a mix) -> the seeds, in order, without duplicates."""
    seeds: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise ValueError(f"bad --seeds {spec!r}; write e.g. '0-4' or '0,1,5'") from None
        if last < first:
            raise ValueError(f"--seeds {spec!r}: {part} counts down; write {last}-{first}")
        seeds += list(range(first, last + 1))
    if not seeds:
        raise ValueError("--seeds is empty; write e.g. '0-4'")
    return list(dict.fromkeys(seeds))
