"""The defense sweep's summaries: Student-t intervals over seeds, the Markdown tables and the plot.

See ``defense_sweep.py`` for why the interval is Student's t over seeds and what it covers.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from scipy import stats

__all__ = ["t_interval", "write_markdown", "write_plot", "REFERENCE"]

#: The method every other one is compared with, paired by seed.
REFERENCE = "spard"


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


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    mean, half = t_interval(values)
    text = f"{mean:.{digits}f}"
    if float(text) == 0.0:
        text = f"{0.0:.{digits}f}"  # no "-0.00" for a difference that rounds to nothing
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def _by(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """(method, attack) -> cells sorted by seed."""
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in sorted(cells, key=lambda c: c["seed"]):
        out.setdefault((c["method"], c["attack"]), []).append(c)
    return out


def write_markdown(
    path: Path,
    cells: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    attacks: Sequence[str],
    seeds: Sequence[int],
    runs: Sequence[Mapping[str, Any]],
    command: str = "python benchmarks/defense_sweep.py",
) -> Path:
    """``defense_sweep.md``: per method and attack, ASR and utility (mean and 95% t interval over
    seeds) and the median fine-tuning seconds, then the per-seed paired differences against :data:`REFERENCE`."""
    by = _by(cells)
    head = "| method | " + " | ".join(f"{a} ASR | {a} utility | {a} s" for a in attacks) + " |"
    lines = [
        "# Defense sweep: every demo method x attack preset x seed",
        "",
        f"`{command}` (seeds {', '.join(map(str, seeds))}; {len(cells)} cells). The runs that filled "
        "`defense_sweep.json`, wall time on this shared 2-core machine: "
        + "; ".join(f"{r['cells']} cells in {r['wall_seconds'] / 60:.1f} min ({r['workers']} workers)" for r in runs)
        + ".",
        "Each entry: mean ± half-width of the 95% Student-t interval over seeds (a seed redraws data, "
        "aligned weights and order; the interval covers seed-to-seed variation, not the fixed "
        "evaluation sets). ASR: lower is safer. `s`: median fine-tuning seconds over seeds "
        "(selection and defense included, evaluation not; wall time on a shared machine, so only "
        "ratios within one column mean much).",
        "",
        head,
        "|" + " --- |" * (1 + 3 * len(attacks)),
    ]
    bases = {}
    for c in cells:
        bases.setdefault(c["attack"], {})[c["seed"]] = c["base"]
    row = ["aligned base"]
    for a in attacks:
        b = list(bases.get(a, {}).values())
        row += [_fmt([x["asr"] for x in b]), _fmt([x["utility"] for x in b]), "-"] if b else ["-"] * 3
    lines.append("| " + " | ".join(row) + " |")
    for m in methods:
        row = [f"`{m}`"]
        for a in attacks:
            cs = by.get((m, a), [])
            if not cs:
                row += ["-"] * 3
                continue
            row += [_fmt([c["asr"] for c in cs]), _fmt([c["utility"] for c in cs]), f"{statistics.median(c['seconds'] for c in cs):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    if REFERENCE in methods:
        lines += [
            "",
            f"## `{REFERENCE}` minus each method, paired by seed",
            "",
            "Mean and 95% t interval of the per-seed difference (same seed = same aligned model and "
            f"data). ASR: negative means `{REFERENCE}` is safer; an interval containing 0 means the "
            "seeds cannot tell the two apart.",
            "",
            "| method | " + " | ".join(f"{a} ΔASR | {a} Δutility" for a in attacks) + " |",
            "|" + " --- |" * (1 + 2 * len(attacks)),
        ]
        for m in methods:
            if m == REFERENCE:
                continue
            row = [f"`{m}`"]
            for a in attacks:
                ref = {c["seed"]: c for c in by.get((REFERENCE, a), [])}
                pairs = [(ref[c["seed"]], c) for c in by.get((m, a), []) if c["seed"] in ref]
                if not pairs:
                    row += ["-", "-"]
                    continue
                row += [_fmt([r[k] - c[k] for r, c in pairs]) for k in ("asr", "utility")]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per-seed numbers (and SPAG's safety loss per step) are in `defense_sweep.json`.", ""]
    path.write_text("\n".join(lines))
    return path


def write_plot(path: Path, cells: Sequence[Mapping[str, Any]], methods: Sequence[str], attacks: Sequence[str]) -> Path | None:
    """``defense_sweep.png``: one panel per attack, ASR and utility per method with 95% t intervals.
    None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    by = _by(cells)
    fig, axes = plt.subplots(len(attacks), 1, figsize=(12, 3.6 * len(attacks)), squeeze=False)
    xs = list(range(len(methods)))
    for ax, attack in zip(axes[:, 0], attacks):
        for offset, metric, label in ((-0.2, "asr", "ASR (lower is safer)"), (0.2, "utility", "utility")):
            stats_ = [t_interval([c[metric] for c in by[(m, attack)]]) if by.get((m, attack)) else (math.nan, math.nan) for m in methods]
            ax.bar([x + offset for x in xs], [s[0] for s in stats_], 0.4, label=label,
                   yerr=[0.0 if math.isnan(s[1]) else s[1] for s in stats_], capsize=2)
        ax.set_xticks(xs, methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.25)
        ax.set_title(f"attack: {attack} (mean and 95% t interval over seeds)")
        ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
