"""Stored cells of the defense sweep (``benchmarks/defense_sweep.py``), built by hand for the
report's tests: what ``run_cell`` records, with the fields the report reads."""

from __future__ import annotations

from typing import Any


def sweep_cell(
    method: str,
    attack: str,
    seed: Any,
    asr: float,
    env: str = "native",
    utility: float = 1.0,
    refusal: float = 0.5,
    *,
    config: dict[str, Any] | None = None,
    method_spec: dict[str, Any] | None = None,
    cpu: str = "cpu",
) -> dict[str, Any]:
    """One cell; ``config`` (without the seed, which is added) and ``method_spec`` are recorded
    only when given, as in cells of earlier versions."""
    cell: dict[str, Any] = {
        "method": method,
        "attack": attack,
        "seed": seed,
        "asr": asr,
        "utility": utility,
        "refusal_prob": refusal,
        "seconds": 2.0,
        "base": {"asr": 0.0, "utility": 1.0},
    }
    if config is not None:
        cell["config"] = {**config, "seed": seed}
    if method_spec is not None:
        cell["method_spec"] = method_spec
    if env == "legacy":
        cell["environment"] = {"label": "legacy", "note": "not recorded"}
    else:
        cell["environment"] = {
            "label": env,
            "cpu": cpu,
            "capability": env.upper(),
            "ATEN_CPU_CAPABILITY": "",
            "torch": "t",
            "transformers": "x",
            "peft": "p",
            "numpy": "n",
            "python": "3",
            "threads": 1,
        }
    return cell
