"""What the demo shows the user: a table on the terminal, ``results.json``, and ``results.png``.

``results.json`` has exactly this shape (issue 4)::

    {"methods": {name: {"asr": float, "utility": float, "projections": int, "seconds": float}},
     "base": {"asr": float, "utility": float},
     "config": {...}}

``seconds`` is the wall time of that method's fine-tuning (selection and SPAG included, evaluation
not); it is the only number that differs between two runs with the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MethodResult", "format_table", "write_results", "write_plot"]

MethodResult = dict[str, Any]  # {"asr", "utility", "projections", "seconds"}


def format_table(base: Mapping[str, float], methods: Mapping[str, MethodResult]) -> str:
    """A fixed-width table: the aligned base model first, then every method in run order."""
    width = max([len("aligned base")] + [len(n) for n in methods])
    lines = [
        f"{'method':<{width}}  {'ASR':>5}  {'utility':>7}  {'projections':>11}  {'seconds':>7}",
        f"{'aligned base':<{width}}  {base['asr']:>5.2f}  {base['utility']:>7.2f}  {'-':>11}  {'-':>7}",
    ]
    for name, r in methods.items():
        lines.append(
            f"{name:<{width}}  {r['asr']:>5.2f}  {r['utility']:>7.2f}  {r['projections']:>11d}  {r['seconds']:>7.1f}"
        )
    return "\n".join(lines)


def write_results(
    out: Path, base: Mapping[str, float], methods: Mapping[str, MethodResult], config: Mapping[str, Any]
) -> Path:
    path = Path(out) / "results.json"
    payload = {
        "methods": {
            name: {
                "asr": float(r["asr"]),
                "utility": float(r["utility"]),
                "projections": int(r["projections"]),
                "seconds": float(r["seconds"]),
            }
            for name, r in methods.items()
        },
        "base": {"asr": float(base["asr"]), "utility": float(base["utility"])},
        "config": dict(config),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_plot(
    out: Path,
    base: Mapping[str, float],
    methods: Mapping[str, MethodResult],
    safety_losses: Mapping[str, list[float]],
    tau: float,
) -> Path | None:
    """``results.png``: ASR and utility per method, and SPAG's safety loss per step against tau.

    Returns None when matplotlib is not installed (it is an optional extra of the demo).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(methods)
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5))
    xs = range(len(names))
    bars.bar([x - 0.2 for x in xs], [methods[n]["asr"] for n in names], 0.4, label="ASR (lower is safer)")
    bars.bar([x + 0.2 for x in xs], [methods[n]["utility"] for n in names], 0.4, label="utility")
    bars.axhline(base["asr"], color="C0", ls=":", lw=1, label="aligned base ASR")
    bars.axhline(base["utility"], color="C1", ls=":", lw=1, label="aligned base utility")
    bars.set_xticks(list(xs), names, rotation=30, ha="right")
    bars.set_ylim(0, 1.35)  # headroom for the legend above the bars
    bars.set_title("after the harmful fine-tuning attack")
    bars.legend(fontsize=8, ncol=2, loc="upper center")
    for name, losses in safety_losses.items():
        if losses:
            curves.plot(range(1, len(losses) + 1), losses, lw=1, label=name)
    curves.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
    curves.set_xlabel("fine-tuning step")
    curves.set_ylabel("safety loss (before projection)")
    curves.set_title("SPAG's safety loss")
    curves.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / "results.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
