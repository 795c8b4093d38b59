"""What the demo shows the user: a table on the terminal, ``results.json``, and ``results.png``.

``results.json`` has exactly this shape::

    {"attacks": {attack: {"config": {...}, "base": {"asr", "utility"},
                          "methods": {name: {"asr", "utility", "projections", "seconds"}}}},
     "methods": ..., "base": ...,   # the first attack's, as before there were several
     "config": {...}}

``seconds`` is the wall time of that method's fine-tuning (selection and SPAG included, evaluation
not); it is the only number that differs between two runs with the same seed. ``projections``
counts the steps on which the safety constraint changed the update: SPAG's projections, the
``penalty`` hinge's active steps, ``safegrad``'s projected conflicting gradients; 0 for methods
without such a test (``sft``, ``safeinstr``, ``lisa``, ``ptst``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MethodResult", "AttackResult", "format_table", "write_results", "write_plot"]

MethodResult = dict[str, Any]  # {"asr", "utility", "projections", "seconds"}
AttackResult = dict[str, Any]  # {"config", "base", "methods": {name: MethodResult}}


def format_table(attacks: Mapping[str, AttackResult]) -> str:
    """A fixed-width table, the attacks side by side: the aligned base model first, then every
    method in run order; per attack ASR, utility, projections and seconds."""
    first = next(iter(attacks.values()))
    names = list(first["methods"])
    width = max([len("aligned base")] + [len(n) for n in names])
    cell = 30
    head = f"{'':<{width}}" + "".join(f"  {('attack: ' + a):^{cell}}" for a in attacks)
    sub = f"{'method':<{width}}" + f"  {'ASR':>5} {'utility':>7} {'proj':>5} {'secs':>7}  " * len(attacks)
    lines = [head, sub.rstrip()]
    row = f"{'aligned base':<{width}}"
    for res in attacks.values():
        row += f"  {res['base']['asr']:>5.2f} {res['base']['utility']:>7.2f} {'-':>5} {'-':>7}  "
    lines.append(row.rstrip())
    for name in names:
        row = f"{name:<{width}}"
        for res in attacks.values():
            r = res["methods"][name]
            row += f"  {r['asr']:>5.2f} {r['utility']:>7.2f} {r['projections']:>5d} {r['seconds']:>7.1f}  "
        lines.append(row.rstrip())
    return "\n".join(lines)


def _methods(methods: Mapping[str, MethodResult]) -> dict[str, MethodResult]:
    return {
        name: {
            "asr": float(r["asr"]),
            "utility": float(r["utility"]),
            "projections": int(r["projections"]),
            "seconds": float(r["seconds"]),
        }
        for name, r in methods.items()
    }


def write_results(out: Path, attacks: Mapping[str, AttackResult], config: Mapping[str, Any]) -> Path:
    path = Path(out) / "results.json"
    per_attack = {
        name: {
            "config": dict(res["config"]),
            "base": {"asr": float(res["base"]["asr"]), "utility": float(res["base"]["utility"])},
            "methods": _methods(res["methods"]),
        }
        for name, res in attacks.items()
    }
    first = next(iter(per_attack.values()))
    payload = {"attacks": per_attack, "methods": first["methods"], "base": first["base"], "config": dict(config)}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_plot(
    out: Path,
    attacks: Mapping[str, AttackResult],
    safety_losses: Mapping[str, Mapping[str, list[float]]],
    tau: float,
) -> Path | None:
    """``results.png``, one row per attack: ASR and utility per method, and the safety loss per
    step against tau (``safety_losses[attack][method]``).

    Returns None when matplotlib is not installed (it is an optional extra of the demo).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(attacks), 2, figsize=(13, 4.5 * len(attacks)), squeeze=False)
    for (attack, res), (bars, curves) in zip(attacks.items(), axes):
        methods, base = res["methods"], res["base"]
        names = list(methods)
        xs = range(len(names))
        bars.bar([x - 0.2 for x in xs], [methods[n]["asr"] for n in names], 0.4, label="ASR (lower is safer)")
        bars.bar([x + 0.2 for x in xs], [methods[n]["utility"] for n in names], 0.4, label="utility")
        bars.axhline(base["asr"], color="C0", ls=":", lw=1, label="aligned base ASR")
        bars.axhline(base["utility"], color="C1", ls=":", lw=1, label="aligned base utility")
        bars.set_xticks(list(xs), names, rotation=30, ha="right")
        bars.set_ylim(0, 1.35)  # headroom for the legend above the bars
        bars.set_title(f"after the {attack} harmful fine-tuning attack")
        bars.legend(fontsize=8, ncol=2, loc="upper center")
        curves.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per curve: up to 20 methods
        for name, losses in safety_losses.get(attack, {}).items():
            # Lisa reports a safety loss on its alignment steps only (NaN elsewhere): plot those points.
            points = [(step, loss) for step, loss in enumerate(losses, start=1) if math.isfinite(loss)]
            if points:
                curves.plot(*zip(*points), lw=1, label=name)
        curves.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
        curves.set_xlabel("fine-tuning step")
        curves.set_ylabel("safety loss (before the defense acts)")
        curves.set_title(f"safety loss on the selected safe data ({attack} attack)")
        curves.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out) / "results.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
