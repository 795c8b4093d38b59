"""What the demo shows the user: per method and attack the mean over seeds with its 95% interval,
the graded refusal probability and a plain verdict against ``sft`` and ``spard``; ``results.json``;
``results.png`` with one dot per seed.

``results.json`` has exactly this shape::

    {"attacks": {attack: {"config": {..., "seeds": [...]},
                          "base": {"asr", "utility", "refusal_prob", "seeds": [row]},
                          "methods": {name: {"asr", "asr_ci", "utility", "utility_ci",
                                             "refusal_prob", "refusal_prob_ci", "vs_sft", "vs_spard",
                                             "seeds": [row]}}}},
     "methods": ..., "base": ...,   # the first attack's, as before there were several
     "config": {...}}

A ``row`` is one seed: ``{"seed", "asr", "utility", "refusal_prob", "projections", "seconds"}``
(the base rows without the last two). ``*_ci`` is the half-width of the 95% Student-t interval over
seeds (null for one seed). ``vs_sft``/``vs_spard``: the paired verdict on ASR (``lower``,
``higher``, ``tie``, ``n<2``; null for the method itself or when it did not run). ``seconds`` is
the wall time of a method's fine-tuning (selection and SPAG included, evaluation not); it is the
only number that differs between two runs with the same seeds. ``projections`` counts the steps on
which the safety constraint changed the update (0 for methods without such a test).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spard_io import write_atomic

from .intervals import t_interval, verdict

__all__ = ["summarize", "format_table", "write_results", "write_plot", "COMPARED_WITH", "PLAIN"]

Row = dict[
    str, Any
]  # one seed: {"seed", "asr", "utility", "refusal_prob", "projections", "seconds"}

#: The methods every other one gets a verdict against: no defense, and SPARD.
COMPARED_WITH = ("sft", "spard")

#: The verdicts in words (ASR: lower is safer).
PLAIN = {
    "lower": "safer than",
    "higher": "less safe than",
    "tie": "indistinguishable from",
    "n<2": "one seed: no verdict vs",
}


def _ci(values: Sequence[float]) -> float | None:
    half = t_interval(values)[1]
    return None if math.isnan(half) else half


def summarize(methods: Mapping[str, Sequence[Row]]) -> dict[str, dict[str, Any]]:
    """Per method: mean and interval of ASR, utility and refusal probability over its seeds, the
    paired ASR verdicts against :data:`COMPARED_WITH`, and the per-seed rows."""
    out = {}
    for name, rows in methods.items():
        summary: dict[str, Any] = {}
        for metric in ("asr", "utility", "refusal_prob"):
            values = [r[metric] for r in rows]
            summary[metric], summary[f"{metric}_ci"] = t_interval(values)[0], _ci(values)
        for other in COMPARED_WITH:
            theirs = {r["seed"]: r["asr"] for r in methods.get(other, [])}
            paired = [r["asr"] - theirs[r["seed"]] for r in rows if r["seed"] in theirs]
            summary[f"vs_{other}"] = (
                None if other == name or other not in methods else verdict(paired)
            )
        out[name] = summary | {"seeds": [dict(r) for r in rows]}
    return out


def _cell(summary: Mapping[str, Any], metric: str) -> str:
    half = summary[f"{metric}_ci"]
    return f"{summary[metric]:.2f}" + ("" if half is None else f" ± {half:.2f}")


def format_table(attacks: Mapping[str, Mapping[str, Any]]) -> str:
    """Per attack, one line per method: ASR and refusal probability (mean ± 95% interval), utility,
    and the verdicts against sft and spard in words; the aligned base first."""
    lines = []
    for attack, res in attacks.items():
        names = list(res["methods"])
        width = max(len("aligned base"), *map(len, names))
        n = len(res["base"]["seeds"])
        lines += [
            f"attack: {attack} ({n} seed{'s' if n != 1 else ''}; mean ± 95% t interval; ASR lower is safer, "
            "refusal higher is safer)",
            f"  {'method':<{width}}  {'ASR':>11}  {'refusal':>11}  {'utility':>7}  verdict (ASR, paired by seed)",
        ]
        base = res["base"]
        lines.append(
            f"  {'aligned base':<{width}}  {base['asr']:>11.2f}  {base['refusal_prob']:>11.2f}  {base['utility']:>7.2f}"
        )
        for name in names:
            s = res["methods"][name]
            words = "; ".join(
                f"{PLAIN[s[f'vs_{o}']]} {o}" for o in COMPARED_WITH if s.get(f"vs_{o}")
            )
            lines.append(
                f"  {name:<{width}}  {_cell(s, 'asr'):>11}  {_cell(s, 'refusal_prob'):>11}  {s['utility']:>7.2f}  {words}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def write_results(
    out: Path, attacks: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]
) -> Path:
    """``results.json`` (the shape in the module docstring), written whole or not at all."""
    path = Path(out) / "results.json"
    per_attack = {
        name: {
            "config": dict(res["config"]),
            "base": dict(res["base"]),
            "methods": dict(res["methods"]),
        }
        for name, res in attacks.items()
    }
    first = next(iter(per_attack.values()))
    payload = {
        "attacks": per_attack,
        "methods": first["methods"],
        "base": first["base"],
        "config": dict(config),
    }
    data = (json.dumps(payload, indent=2) + "\n").encode()
    write_atomic(path, lambda handle: handle.write(data))
    return path


def _dots(ax, attack: str, res: Mapping[str, Any]) -> None:
    """ASR and refusal probability per method: one dot per seed, the mean with its 95% interval."""
    names = list(res["methods"])
    for offset, metric, label, colour in (
        (-0.15, "asr", "ASR (lower is safer)", "C0"),
        (0.15, "refusal_prob", "refusal probability (higher is safer)", "C2"),
    ):
        for i, name in enumerate(names):
            s = res["methods"][name]
            values = [r[metric] for r in s["seeds"]]
            ax.scatter([i + offset] * len(values), values, s=12, color=colour, alpha=0.4)
            ax.errorbar(
                [i + offset],
                [s[metric]],
                yerr=[s[f"{metric}_ci"] or 0.0],
                fmt="_",
                color=colour,
                markersize=14,
                capsize=4,
                label=label if i == 0 else None,
            )
    ax.axhline(res["base"]["asr"], color="C0", ls=":", lw=1, label="aligned base ASR")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(-0.05, 1.35)  # headroom for the legend
    ax.set_title(f"after the {attack} attack: one dot per seed, mean and 95% interval")
    ax.legend(fontsize=8, ncol=2, loc="upper center")


def write_plot(
    out: Path,
    attacks: Mapping[str, Mapping[str, Any]],
    safety_losses: Mapping[str, Mapping[str, list[float]]],
    tau: float,
) -> Path | None:
    """``results.png``, one row per attack: per-seed dots of ASR and refusal probability per method,
    and the safety loss per step against tau for the first seed (``safety_losses[attack][method]``).

    Returns None when matplotlib is not installed (it is an optional extra of the demo).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(attacks), 2, figsize=(13, 4.5 * len(attacks)), squeeze=False)
    for (attack, res), (dots, curves) in zip(attacks.items(), axes):
        _dots(dots, attack, res)
        curves.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per curve: up to 20 methods
        for name, losses in safety_losses.get(attack, {}).items():
            # Lisa reports a safety loss on its alignment steps only (NaN elsewhere): plot those points.
            points = [
                (step, loss) for step, loss in enumerate(losses, start=1) if math.isfinite(loss)
            ]
            if points:
                curves.plot(*zip(*points), lw=1, label=name)
        curves.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
        curves.set_xlabel("fine-tuning step")
        curves.set_ylabel("safety loss (before the defense acts)")
        curves.set_title(f"safety loss on the selected safe data ({attack} attack, first seed)")
        curves.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out) / "results.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
