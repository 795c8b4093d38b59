"""examples/quickstart.py loaded as a module, one ``--smoke`` run of it, and the per-method keys
of the results.json it writes, shared by the quickstart's test files."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.module_from_path import module_from_path

__all__ = ["BASELINES", "SUMMARY", "quickstart", "run_smoke"]

quickstart = module_from_path(Path(__file__).resolve().parents[2] / "examples" / "quickstart.py")

#: The paper's baselines, as the demo names them.
BASELINES = ("penalty", "safeinstr", "lisa", "safegrad", "ptst")

#: The keys of each method's summary in results.json.
SUMMARY = {
    "asr",
    "asr_ci",
    "utility",
    "utility_ci",
    "refusal_prob",
    "refusal_prob_ci",
    "vs_sft",
    "vs_spard",
    "seeds",
}


def run_smoke(out: Path, *extra: str) -> dict:
    """Run the quickstart at its ``--smoke`` size into ``out``; its results.json."""
    argv = ["--smoke", "--no-progress", "--out", str(out), *extra]
    assert quickstart.main(argv) == 0
    return json.loads((out / "results.json").read_text())
