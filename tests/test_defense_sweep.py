"""benchmarks/defense_sweep.py at smoke sizes: the Student-t interval against its literal formula
with tabulated quantiles, resumption (a finished cell is never recomputed, a new method only adds
its cells), and that re-running a stored cell reproduces its numbers exactly."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("scipy")

import defense_sweep  # noqa: E402
from defense_sweep_report import t_interval, write_markdown  # noqa: E402

#: Two-sided 95% Student-t quantiles t(0.975, df) from a printed table.
T975 = {1: 12.7062047, 2: 4.3026527, 4: 2.7764451, 9: 2.2621572}


@pytest.mark.parametrize("values", [[0.0, 1.0], [0.2, 0.4, 0.9], [1.0, 0.93, 0.0, 0.06, 0.22], [0.1 * i for i in range(10)]])
def test_t_interval_matches_the_literal_formula(values):
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    got_mean, got_half = t_interval(values)
    assert got_mean == pytest.approx(mean, abs=1e-12)
    assert got_half == pytest.approx(T975[n - 1] * s / math.sqrt(n), rel=1e-6)


def test_t_interval_of_identical_values_is_zero_wide_and_of_one_value_undefined():
    assert t_interval([1.0] * 5) == (1.0, 0.0)
    mean, half = t_interval([0.3])
    assert mean == 0.3 and math.isnan(half)
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_seeds_parse_ranges_and_lists_and_refuse_garbage():
    assert defense_sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert defense_sweep.parse_seeds("3, 0-1,3") == [3, 0, 1]
    for bad in ("", "a-b", "1-"):
        with pytest.raises(ValueError, match="seeds"):
            defense_sweep.parse_seeds(bad)


def test_the_resumption_key_changes_with_the_attack_and_seed_but_not_the_method_list():
    k = defense_sweep.cell_key("spard", "heavy", 0, smoke=True)
    assert k.startswith("spard|heavy|0|")
    assert defense_sweep.cell_key("spard", "strong", 0, smoke=True).split("|")[3] != k.split("|")[3]
    assert defense_sweep.cell_key("sft", "heavy", 0, smoke=True).split("|")[3] == k.split("|")[3]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cache = out / "cache"
    state = defense_sweep.sweep(["spard"], ["heavy"], [0], out=out, cache_dir=cache, smoke=True, progress=False)
    return out, cache, state


def test_a_stored_cell_is_reproduced_exactly_by_running_it_again(swept):
    out, cache, _ = swept
    stored = json.loads((out / "defense_sweep.json").read_text())["cells"]
    key = defense_sweep.cell_key("spard", "heavy", 0, smoke=True)
    assert list(stored) == [key]
    defense_sweep._CONTEXTS.clear()
    again = defense_sweep.run_cell("spard", "heavy", 0, smoke=True, cache_dir=cache)
    for field in ("asr", "utility", "projections", "base", "safety_losses"):
        assert again[field] == stored[key][field], field
    assert len(again["safety_losses"]) == 10 * 4  # heavy: 10 epochs of ceil(50 / 16) steps


def test_a_finished_cell_is_never_recomputed_and_a_new_method_only_adds_its_cell(swept):
    out, cache, first = swept
    before = json.loads((out / "defense_sweep.json").read_text())["cells"]
    state = defense_sweep.sweep(["spard", "sft"], ["heavy"], [0], out=out, cache_dir=cache, smoke=True, progress=False)
    assert state["runs"][-1]["cells"] == 1  # sft only
    assert state["cells"][next(iter(before))] == before[next(iter(before))]  # untouched
    assert set(state["cells"]) == set(before) | {defense_sweep.cell_key("sft", "heavy", 0, smoke=True)}
    again = defense_sweep.sweep(["spard", "sft"], ["heavy"], [0], out=out, cache_dir=cache, smoke=True, progress=False)
    assert again["cells"] == state["cells"]
    assert len(again["runs"]) == len(state["runs"])  # nothing to run: no run recorded


def test_the_markdown_table_has_mean_and_interval_per_method_and_the_paired_differences(tmp_path):
    def cell(method, seed, asr):
        return {"method": method, "attack": "heavy", "seed": seed, "asr": asr, "utility": 1.0, "seconds": 2.0,
                "base": {"asr": 0.0, "utility": 1.0}}

    cells = [cell("sft", s, 1.0) for s in range(3)] + [cell("spard", s, a) for s, a in enumerate((0.2, 0.4, 0.9))]
    text = write_markdown(tmp_path / "t.md", cells, ["sft", "spard"], ["heavy"], [0, 1, 2], [{"cells": 6, "wall_seconds": 60.0, "workers": 1}]).read_text()
    mean, half = t_interval([0.2, 0.4, 0.9])
    assert f"| `spard` | {mean:.2f} ± {half:.2f} | 1.00 ± 0.00 | 2 |" in text
    assert "| `sft` | 1.00 ± 0.00 |" in text
    assert "6 cells in 1.0 min (1 workers)" in text
    diff_mean, diff_half = t_interval([-0.8, -0.6, -0.1])
    assert f"| `sft` | {diff_mean:.2f} ± {diff_half:.2f} | 0.00 ± 0.00 |" in text
