"""benchmarks/defense_sweep.py at smoke sizes: the Student-t interval against its literal formula
with tabulated quantiles, resumption (a finished cell is never recomputed, a new method only adds
its cells), that re-running a stored cell reproduces its numbers exactly, that two runs at once
lose no cell, that a bad results file stops the run before anything changes, that a method's
options and the environment are part of the key, the graded refusal probability, and the
verdicts (the report on hand-built cells is in test_defense_sweep_report.py)."""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("scipy")

import defense_sweep  # noqa: E402
from _demo import evaluation  # noqa: E402
from _demo.alignment import aligned_model  # noqa: E402
from _demo.config import SMOKE, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.environment import environment_key  # noqa: E402
from _demo.intervals import parse_seeds, t_interval, verdict  # noqa: E402

#: Two-sided 95% Student-t quantiles t(0.975, df) from a printed table.
T975 = {1: 12.7062047, 2: 4.3026527, 4: 2.7764451, 9: 2.2621572}


@pytest.mark.parametrize(
    "values",
    [[0.0, 1.0], [0.2, 0.4, 0.9], [1.0, 0.93, 0.0, 0.06, 0.22], [0.1 * i for i in range(10)]],
)
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
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3, 0-1,3") == [3, 0, 1]
    for bad in ("", "a-b", "1-"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match=r"--seeds '0,5-1': 5-1 counts down; write 1-5"):
        parse_seeds("0,5-1")  # it used to say "--seeds is empty" (or drop the range silently)


def test_the_resumption_key_changes_with_attack_seed_and_environment_but_not_the_method_list():
    k = defense_sweep.cell_key("spard", "heavy", 0, "env", smoke=True)
    assert k.startswith("spard|heavy|0|") and k.endswith("|env")
    assert (
        defense_sweep.cell_key("spard", "strong", 0, "env", smoke=True).split("|")[3]
        != k.split("|")[3]
    )
    assert (
        defense_sweep.cell_key("spard", "heavy", 1, "env", smoke=True).split("|")[3]
        != k.split("|")[3]
    )
    assert defense_sweep.cell_key("spard", "heavy", 0, "other", smoke=True) != k


def test_a_changed_method_option_changes_the_key(monkeypatch):
    """Changing e.g. FIXED_ETA used to reuse the stale cell stored under the old value."""
    before = defense_sweep.cell_key("spard_fixed_trust", "heavy", 0, "env", smoke=True)
    changed = replace(defense_sweep.METHODS["spard_fixed_trust"], options={"trust_region": 0.02})
    monkeypatch.setitem(defense_sweep.METHODS, "spard_fixed_trust", changed)
    assert defense_sweep.cell_key("spard_fixed_trust", "heavy", 0, "env", smoke=True) != before
    # Two methods with different definitions never share a configuration hash.
    keys = {
        defense_sweep.cell_key(m, "heavy", 0, "env", smoke=True).split("|")[3]
        for m in ("sft", "spard", "penalty")
    }
    assert len(keys) == 3


def test_a_method_of_its_own_safe_ratio_has_its_own_key_and_the_others_keep_theirs():
    """``safe_ratio`` enters a method's key only when the method sets it, so adding the field
    left the key of every committed cell as it was (the committed sweep resumes from them)."""
    committed = json.loads(
        (defense_sweep.ROOT / "benchmarks" / "results" / "defense_sweep.json").read_text()
    )["cells"]
    for method in ("sft", "spard", "penalty"):
        config_hash = defense_sweep.cell_key(method, "standard", 0, "env").split("|")[3]
        assert any(key.startswith(f"{method}|standard|0|{config_hash}|") for key in committed)
    more = defense_sweep.cell_key("spard_more_safe", "standard", 0, "env", smoke=True)
    assert (
        more.split("|")[3]
        != defense_sweep.cell_key("spard", "standard", 0, "env", smoke=True).split("|")[3]
    )


def test_a_method_of_its_own_safe_ratio_trains_on_that_share_of_the_fine_tuning_set(swept):
    _, cache, _, _ = swept
    ctx = defense_sweep._context("heavy", 0, True, cache)
    selector, n_finetune = ctx["selector"], len(ctx["data"].finetune)
    default = selector.select("dpp")
    more = selector.select("dpp", defense_sweep.METHODS["spard_more_safe"].safe_ratio)
    assert len(default) == max(1, round(ctx["config"].safe_ratio * n_finetune))
    expected = round(defense_sweep.METHODS["spard_more_safe"].safe_ratio * n_finetune)
    assert len(more) == min(len(ctx["data"].safe_pool), expected) > len(default)
    assert selector.select("dpp") is default  # memoised per (method, size)


def test_the_kernel_setting_is_measured_in_a_fresh_process():
    native = defense_sweep.probe_environment("native", 1)
    assert (
        native["label"] == "native"
        and native["ATEN_CPU_CAPABILITY"] == ""
        and native["threads"] == 1
    )
    if "avx2" in native["cpu_flags"]:
        avx2 = defense_sweep.probe_environment("avx2", 1)
        assert avx2["capability"] == "AVX2" and avx2["label"] == "avx2"
        assert environment_key(avx2) != environment_key(native)
    with pytest.raises(ValueError, match="ATEN_CPU_CAPABILITY=no_such_kernel"):
        defense_sweep.probe_environment("no_such_kernel", 1)


#: The kernel setting this process runs in: cells swept in it can be re-run here exactly.
HERE = (os.environ.get("ATEN_CPU_CAPABILITY", "").lower() or "native",)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One cell swept in the kernel setting this process runs in, so that re-running the cell
    here reproduces it exactly (another setting is another environment, with other numbers)."""
    out = tmp_path_factory.mktemp("sweep")
    cache = out / "cache"
    label = HERE[0]
    state = defense_sweep.sweep(
        ["spard"],
        ["heavy"],
        [0],
        out=out,
        cache_dir=cache,
        smoke=True,
        progress=False,
        environments=HERE,
    )
    env_key = environment_key(defense_sweep.probe_environment(label, 1))
    return out, cache, state, env_key


def test_a_stored_cell_is_reproduced_exactly_by_running_it_again(swept):
    out, cache, _, env_key = swept
    stored = json.loads((out / "defense_sweep.json").read_text())["cells"]
    key = defense_sweep.cell_key("spard", "heavy", 0, env_key, smoke=True)
    assert list(stored) == [key]
    defense_sweep._CONTEXTS.clear()
    again = defense_sweep.run_cell("spard", "heavy", 0, smoke=True, cache_dir=cache / env_key)
    for field in (
        "asr",
        "utility",
        "refusal_prob",
        "asr_verdicts",
        "utility_verdicts",
        "refusal_probs",
        "projections",
        "base",
        "safety_losses",
        "config",
        "method_spec",
    ):
        assert again[field] == stored[key][field], field
    assert len(again["safety_losses"]) == 10 * 4  # heavy: 10 epochs of ceil(50 / 16) steps


def test_a_cell_records_what_a_rerun_needs(swept):
    out, _, _, env_key = swept
    (cell,) = json.loads((out / "defense_sweep.json").read_text())["cells"].values()
    assert (
        environment_key(cell["environment"]) == env_key
    )  # the worker's environment is the probed one
    assert cell["environment"]["capability"] and cell["environment"]["torch"]
    assert cell["config"]["seed"] == 0 and cell["config"]["finetune_epochs"] == 10
    assert cell["method_spec"]["selection"] == "dpp"
    assert len(cell["asr_verdicts"]) == len(cell["refusal_probs"]) == 72
    assert cell["asr"] == cell["asr_verdicts"].count("1") / 72
    assert cell["utility"] == cell["utility_verdicts"].count("1") / len(cell["utility_verdicts"])
    assert cell["refusal_prob"] == pytest.approx(sum(cell["refusal_probs"]) / 72, abs=1e-3)


def test_a_finished_cell_is_never_recomputed_and_a_new_method_only_adds_its_cell(swept):
    out, cache, first, env_key = swept
    before = json.loads((out / "defense_sweep.json").read_text())["cells"]

    def sweep_spard_and_sft():
        return defense_sweep.sweep(
            ["spard", "sft"],
            ["heavy"],
            [0],
            out=out,
            cache_dir=cache,
            smoke=True,
            progress=False,
            environments=HERE,
        )

    state = sweep_spard_and_sft()
    assert state["runs"][-1]["cells"] == 1  # sft only
    assert state["cells"][next(iter(before))] == before[next(iter(before))]  # untouched
    assert set(state["cells"]) == set(before) | {
        defense_sweep.cell_key("sft", "heavy", 0, env_key, smoke=True)
    }
    again = sweep_spard_and_sft()
    assert again["cells"] == state["cells"]
    assert len(again["runs"]) == len(state["runs"])  # nothing to run: no run recorded


def test_two_runs_into_one_out_at_the_same_time_keep_every_cell(swept, tmp_path):
    """Each run used to write back the state it had read at its start: the last writer's cells won."""
    _, cache, _, env_key = swept  # the aligned model is cached: both runs go straight to stage 2
    runs = [["sft"], ["spard"]]
    errors = []

    def run(methods):
        try:
            defense_sweep.sweep(
                methods,
                ["heavy"],
                [0],
                out=tmp_path,
                cache_dir=cache,
                smoke=True,
                progress=False,
                environments=HERE,
            )
        except BaseException as err:  # surfaced below: a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=run, args=(m,)) for m in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = json.loads((tmp_path / "defense_sweep.json").read_text())
    assert set(stored["cells"]) == {
        defense_sweep.cell_key(m, "heavy", 0, env_key, smoke=True) for (m,) in runs
    }
    assert sorted(r["cells"] for r in stored["runs"]) == [1, 1]


def _main_fails_and_leaves(tmp_path, capsys, text: str) -> str:
    path = tmp_path / "defense_sweep.json"
    path.write_text(text)
    argv = [
        "--smoke",
        "--no-progress",
        "--methods",
        "sft",
        "--attacks",
        "heavy",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
    ]
    assert defense_sweep.main(argv) == 2
    assert path.read_text() == text  # never overwritten
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err  # one line naming the file
    return err


def test_a_truncated_results_file_is_named_in_one_line_and_left_as_it_was(tmp_path, capsys):
    err = _main_fails_and_leaves(
        tmp_path, capsys, '{"cells": {"sft|heavy|0|abc": {"method": "sft", "as'
    )
    assert "truncated" in err and "move it away" in err


def test_cells_of_the_wrong_type_stop_the_run_before_any_cell_is_computed(tmp_path, capsys):
    """``{"cells": []}`` used to compute a cell and then lose it."""
    err = _main_fails_and_leaves(tmp_path, capsys, '{"cells": []}')
    assert "no 'cells' object" in err
    assert not (tmp_path / "defense_sweep.md").exists()


def test_a_stored_cell_without_asr_stops_the_run_and_names_the_cell(tmp_path, capsys):
    """Such a cell was never recomputed, and the report crashed after the whole run."""
    cell = {
        "method": "sft",
        "attack": "heavy",
        "seed": 0,
        "utility": 1.0,
        "base": {"asr": 0.0, "utility": 1.0},
    }
    err = _main_fails_and_leaves(tmp_path, capsys, json.dumps({"cells": {"sft|heavy|0|abc": cell}}))
    assert "'sft|heavy|0|abc' lacks ['asr']" in err and "delete that cell" in err


@pytest.fixture(scope="module")
def smoke_model(swept):
    _, cache, _, env_key = swept
    config = with_attack(replace(SMOKE, seed=0), "heavy")
    data = make_demo_data(config)
    model, _, cached = aligned_model(config, data, cache / env_key, progress=False)
    assert cached
    return model, data


@torch.no_grad()
def test_the_refusal_probability_is_the_product_of_the_openings_next_token_probabilities(
    smoke_model,
):
    model, data = smoke_model
    tok = data.tokenizer
    harmful = data.heldout_harmful[:6]
    got = evaluation.refusal_probabilities(model, tok, harmful)
    opening = tok("i cannot", add_special_tokens=False)["input_ids"]
    for ex, p in zip(harmful, got):
        prompt = [tok.bos_token_id] + tok(
            f"user : {ex.prompt} assistant :", add_special_tokens=False
        )["input_ids"]
        expected = 1.0
        for (
            token
        ) in opening:  # one prompt at a time, token by token: no batching, no shared positions
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
            expected *= float(torch.softmax(logits, -1)[token])
            prompt = prompt + [token]
        assert p == pytest.approx(
            expected, rel=1e-5
        )  # float32 logits of a differently shaped batch


def test_a_prompt_whose_refusal_probability_exceeds_one_half_is_refused_by_greedy_decoding(
    smoke_model,
):
    """P(a) * P(b | a) > 1/2 makes both factors > 1/2, so both tokens are greedy's argmax."""
    model, data = smoke_model
    tok = data.tokenizer
    probs = evaluation.refusal_probabilities(model, tok, data.heldout_harmful)
    verdicts = evaluation.harmful_verdicts(model, tok, data.heldout_harmful)
    assert all(v == 0 for p, v in zip(probs, verdicts) if p > 0.5)
    assert all(0.0 <= p <= 1.0 for p in probs)


def test_verdicts_need_an_interval_that_excludes_zero():
    assert verdict([-0.5, -0.4, -0.6]) == "lower"
    assert verdict([0.5, 0.4, 0.6]) == "higher"
    assert verdict([-0.5, 0.4, 0.0]) == "tie"
    assert verdict([0.0, 0.0]) == "tie"
    assert verdict([0.3]) == "n<2"
