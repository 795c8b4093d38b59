"""The defense sweep's report never mixes cells of different configurations or machines into one
entry, says what it cannot show yet, and refuses a results file it cannot read (hand-built cells,
no training)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("scipy")

import defense_sweep_report as report  # noqa: E402
from _demo.intervals import t_interval  # noqa: E402
from defense_sweep_report import write_markdown  # noqa: E402

from helpers.sweep_cells import sweep_cell  # noqa: E402

FULL = {"finetune_problems": 400, "finetune_epochs": 10}
SMOKE = {"finetune_problems": 40, "finetune_epochs": 1}
SPEC = {"selection": "dpp", "options": {}}


def row(text, name):
    """The first table row of method ``name`` (its side-by-side row)."""
    return next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))


def full_grid(method, asrs, **kw):
    return [
        sweep_cell(method, "heavy", s, a, config=FULL, method_spec=SPEC, **kw)
        for s, a in enumerate(asrs)
    ]


def test_a_smoke_cell_in_the_results_is_its_own_row_not_a_seed_of_the_real_one(tmp_path):
    """One --smoke run into the default --out replaced seed 0 of the real rows, shown as [20]."""
    cells = full_grid("sft", [1.0, 1.0, 1.0]) + full_grid("spard", [0.1, 0.2, 0.3])
    cells.append(sweep_cell("spard", "heavy", 0, 0.9, config=SMOKE, method_spec=SPEC))
    text = write_markdown(tmp_path / "r.md", cells).read_text()
    mean, half = t_interval([0.1, 0.2, 0.3])
    assert row(text, "spard").startswith(f"| `spard` | {mean:.2f} ± {half:.2f} [3] |")
    other = next(line for line in text.splitlines() if line.startswith("| `spard@"))
    assert "| 0.90 [1] |" in other
    note = next(line for line in text.splitlines() if "another configuration" in line)
    assert (
        "finetune_problems 40 (`spard`: 400)" in note and "finetune_epochs 1 (`spard`: 10)" in note
    )


def test_cells_of_a_changed_option_are_shown_beside_the_old_ones_not_instead(tmp_path):
    """After an option change the old cells vanished from the table, unreported."""
    changed = {**SPEC, "options": {"rho": 0.5}}
    cells = full_grid("sft", [1.0] * 3) + full_grid("spard", [0.1, 0.2, 0.3])
    cells += [
        sweep_cell("spard", "heavy", s, 0.6, config=FULL, method_spec=changed) for s in range(2)
    ]
    text = write_markdown(tmp_path / "r.md", cells).read_text()
    assert "[3]" in row(text, "spard")
    other = next(line for line in text.splitlines() if line.startswith("| `spard@"))
    assert "0.60 ± 0.00 [2]" in other
    assert "method_spec.options" in next(
        line for line in text.splitlines() if "another configuration" in line
    )


def test_two_machines_under_one_label_are_two_environments(tmp_path):
    cells = [sweep_cell("sft", "heavy", s, 1.0, cpu="A") for s in range(2)]
    cells += [sweep_cell("sft", "heavy", s, 0.5, cpu="B") for s in range(2)]
    text = write_markdown(tmp_path / "r.md", cells).read_text()
    assert "| `sft` | 1.00 ± 0.00 [2] | 0.50 ± 0.00 [2] |" in text


def test_one_environment_shows_no_empty_differences_or_pending_agreement(tmp_path):
    """One environment used to give empty 'native − native' columns and 'pending' agreement."""
    cells = full_grid("sft", [1.0] * 3) + full_grid("spard", [0.1, 0.2, 0.3])
    text = write_markdown(tmp_path / "r.md", cells).read_text()
    assert "−native" not in text and "pending" not in text and "| agree |" not in text
    assert row(text, "spard").endswith("| lower | - |")


def test_the_worst_case_says_it_needs_sft_cells(tmp_path):
    cells = full_grid("spard", [0.1, 0.2, 0.3])
    text = write_markdown(tmp_path / "r.md", cells).read_text()
    worst = next(
        line for line in text.splitlines() if line.startswith("| `spard` |") and "needs" in line
    )
    assert "needs `sft` cells" in worst


@pytest.mark.parametrize("seed", ["3", True, 1.5, None])
def test_a_seed_that_is_not_an_int_is_named_before_the_report(tmp_path, capsys, seed):
    """A string seed crashed the report (sorting int and str)."""
    cells = {"a": sweep_cell("sft", "heavy", 0, 1.0), "b": sweep_cell("sft", "heavy", seed, 1.0)}
    path = tmp_path / "defense_sweep.json"
    path.write_text(json.dumps({"cells": cells}))
    assert report.main(["--results", str(path), "--stem", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"cell 'b' has seed {seed!r}, not an int" in err
    assert not (tmp_path / "r.md").exists()


def _report_main(tmp_path, state):
    path = tmp_path / "defense_sweep.json"
    if state is not None:
        path.write_text(json.dumps(state))
    return report.main(["--results", str(path), "--stem", str(tmp_path / "r")])


@pytest.mark.parametrize(
    "state, says",
    [
        (None, "no results file"),  # a FileNotFoundError traceback
        ({"cells": {}, "runs": [{"cells": 1}]}, "run 0 lacks"),  # KeyError: 'wall_seconds'
        (
            {"cells": {"k": {**sweep_cell("sft", "heavy", 0, 1.0), "refusal_prob": "x"}}},
            "cell 'k' has refusal_prob 'x'",  # TypeError deep in statistics.fmean
        ),
        (
            {"cells": {"k": {**sweep_cell("sft", "heavy", 0, 1.0), "method": 3}}},
            "cell 'k' has method 3, not a name",
        ),
        (
            {"cells": {"k": {**sweep_cell("sft", "heavy", 0, 1.0), "environment": "native"}}},
            "cell 'k' has an environment that is not an object",  # AttributeError on .get
        ),
    ],
    ids=["missing", "run_without_time", "refusal_prob_str", "method_int", "environment_str"],
)
def test_a_results_file_the_report_cannot_use_is_one_line(tmp_path, capsys, state, says):
    assert _report_main(tmp_path, state) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert not (tmp_path / "r.md").exists()


def test_the_report_puts_environments_side_by_side_with_paired_differences_and_verdicts(tmp_path):
    spard = {"native": (0.1, 0.2, 0.3), "avx2": (0.2, 0.2, 0.4)}
    cells = [sweep_cell("sft", "heavy", s, 1.0, e) for e in spard for s in range(3)]
    cells += [
        sweep_cell("spard", "heavy", s, a, e, refusal=1 - a)
        for e, asrs in spard.items()
        for s, a in enumerate(asrs)
    ]
    cells += [sweep_cell("spard", "heavy", s, 0.0, "legacy") for s in range(5)]  # never compared
    text = write_markdown(
        tmp_path / "t.md", cells, [{"cells": 12, "wall_seconds": 60.0, "workers": 1}]
    ).read_text()
    spard_row = next(
        line for line in text.splitlines() if line.startswith("| `spard` |") and "ΔASR" not in line
    )
    mean, half = t_interval([0.1, 0.2, 0.3])
    assert (
        f"| `spard` | {mean:.2f} ± {half:.2f} [3] |" in spard_row
    )  # native first, from 3 seeds, legacy not mixed in
    diff, diff_half = t_interval([0.1, 0.0, 0.1])
    assert f"{diff:.2f} ± {diff_half:.2f} [3]" in spard_row  # avx2 - native, paired by seed
    assert spard_row.endswith("| lower/lower | -/- | yes |")  # spard below sft in both environments
    assert "12 cells in 1.0 min (1 workers)" in text
    assert "## Legacy cells" in text and "| `spard` | 0.00 ± 0.00 [5] |" in text
    worst = next(
        line
        for line in text.splitlines()
        if line.startswith("| `spard` | ") and "left out" not in line and line.count("|") == 6
    )
    assert (
        worst
        == f"| `spard` | {mean:.2f} ± {half:.2f} [3] | 0 | {t_interval([0.2, 0.2, 0.4])[0]:.2f} ± {t_interval([0.2, 0.2, 0.4])[1]:.2f} [3] | 0 |"
    )


def test_the_report_works_on_partial_data_and_says_so(tmp_path):
    cells = [
        sweep_cell("sft", "heavy", 0, 1.0),
        sweep_cell("spard", "heavy", 0, 0.5),
        sweep_cell("spard", "strong", 1, 0.0, "avx2"),
    ]
    text = write_markdown(tmp_path / "t.md", cells).read_text()
    assert "| `spard` | 0.50 [1] | - |" in text  # one seed: a mean without an interval
    assert "pending" in text  # no verdict from one seed


def test_the_worst_case_leaves_out_attacks_that_cost_more_than_a_tenth_of_sfts_utility():
    index = report._index(
        [
            sweep_cell("sft", "standard", 0, 1.0, utility=0.9),
            sweep_cell("sft", "heavy", 0, 1.0, utility=0.9),
            sweep_cell("spard", "standard", 0, 0.2, utility=0.85),
            sweep_cell("spard", "heavy", 0, 0.9, utility=0.5),
            sweep_cell("penalty", "standard", 0, 0.1, utility=0.1),
            sweep_cell("penalty", "heavy", 0, 0.7, utility=0.2),
        ]
    )
    worst = report._worst_case(index, ["spard", "penalty"], ["standard", "heavy"], "native")
    assert worst["spard"] == (
        [0.2],
        0,
    )  # heavy kept 0.5 < 0.9 * 0.9: not a valid attack configuration
    assert worst["penalty"] == ([], 1)  # no preset kept utility: left out, counted
