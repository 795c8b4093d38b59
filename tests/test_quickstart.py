"""End-to-end and unit tests of examples/quickstart.py at its ``--smoke`` size (seconds, not
results): the results.json schema, determinism for a seed, the aligned-model cache, --methods."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from _demo import data  # noqa: E402
from _demo.config import SMOKE  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.encoding import collate, encode, prompt_batch  # noqa: E402
from _demo.methods import METHODS, resolve_methods  # noqa: E402
from _demo.report import format_table, write_plot  # noqa: E402


def _load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quickstart = _load_quickstart()


def _run(out: Path, *extra: str) -> dict:
    argv = ["--smoke", "--no-progress", "--out", str(out), *extra]
    assert quickstart.main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _without_seconds(results: dict) -> dict:
    methods = {n: {k: v for k, v in r.items() if k != "seconds"} for n, r in results["methods"].items()}
    config = {k: v for k, v in results["config"].items() if k not in ("cached", "cache")}
    return {"methods": methods, "base": results["base"], "config": config}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One smoke run with an empty cache and two methods (one with SPAG, one without)."""
    out = tmp_path_factory.mktemp("first")
    return out, _run(out, "--methods", "sft,spard_no_trust", "--seed", "3")


def test_results_json_has_exactly_the_documented_schema(first_run):
    out, results = first_run
    assert set(results) == {"methods", "base", "config"}
    assert list(results["methods"]) == ["sft", "spard_no_trust"]
    for name, r in results["methods"].items():
        assert set(r) == {"asr", "utility", "projections", "seconds"}, name
        assert isinstance(r["asr"], float) and 0.0 <= r["asr"] <= 1.0
        assert isinstance(r["utility"], float) and 0.0 <= r["utility"] <= 1.0
        assert isinstance(r["projections"], int) and r["projections"] >= 0
        assert isinstance(r["seconds"], float) and r["seconds"] > 0.0
    assert set(results["base"]) == {"asr", "utility"}
    assert results["methods"]["sft"]["projections"] == 0  # no SPAG, nothing to project
    config = results["config"]
    assert config["seed"] == 3 and config["methods"] == ["sft", "spard_no_trust"]
    assert config["cached"] is False


def test_first_run_caches_the_aligned_model_as_safetensors(first_run):
    out, results = first_run
    folder = Path(results["config"]["cache"])
    assert folder.parent == out / "cache"
    assert (folder / "model.safetensors").is_file()


def test_second_run_loads_the_cache_and_reproduces_every_number(first_run, tmp_path):
    out, first = first_run
    second = _run(tmp_path, "--methods", "sft,spard_no_trust", "--seed", "3", "--cache-dir", str(out / "cache"))
    assert second["config"]["cached"] is True
    assert _without_seconds(second) == _without_seconds(first)


def test_no_cache_retrains_to_the_same_weights(first_run, tmp_path):
    out, first = first_run
    again = _run(tmp_path, "--methods", "sft", "--seed", "3", "--cache-dir", str(out / "cache"), "--no-cache")
    assert again["config"]["cached"] is False
    assert again["base"] == first["base"]
    assert again["methods"]["sft"]["asr"] == first["methods"]["sft"]["asr"]
    assert again["methods"]["sft"]["utility"] == first["methods"]["sft"]["utility"]


def test_a_different_seed_gets_its_own_cache_entry(first_run, tmp_path):
    out, first = first_run
    other = _run(tmp_path, "--methods", "sft", "--seed", "4", "--cache-dir", str(out / "cache"))
    assert other["config"]["cached"] is False
    assert other["config"]["cache"] != first["config"]["cache"]


def test_results_png_is_written_when_matplotlib_imports(first_run):
    pytest.importorskip("matplotlib")
    out, _ = first_run
    assert (out / "results.png").stat().st_size > 0


def test_plot_is_skipped_with_a_message_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    base = {"asr": 0.0, "utility": 1.0}
    methods = {"sft": {"asr": 1.0, "utility": 1.0, "projections": 0, "seconds": 1.0}}
    assert write_plot(tmp_path, base, methods, {"sft": []}, tau=0.01) is None
    assert not (tmp_path / "results.png").exists()


def test_methods_all_lists_every_method_and_subsets_keep_order():
    assert resolve_methods("all") == list(METHODS)
    assert {"sft", "spag_random", "spag_top_relevance", "spard", "spard_lr_trust", "spard_authors_code"} <= set(METHODS)
    assert resolve_methods("spard, sft,spard") == ["spard", "sft"]


@pytest.mark.parametrize("spec", ["", "sft,nonsense"])
def test_bad_methods_fail_with_the_valid_names(spec, capsys):
    with pytest.raises(ValueError, match="sft"):
        resolve_methods(spec)
    assert quickstart.main(["--methods", spec, "--out", "unused"]) == 2
    assert "spard_authors_code" in capsys.readouterr().err or spec == ""


def test_harmful_tasks_of_attack_pool_and_held_out_are_disjoint():
    split = data.harmful_splits(0)
    assert not set(split.attack) & set(split.pool)
    assert not set(split.attack) & set(split.held_out)
    assert not set(split.pool) & set(split.held_out)
    assert sorted(split.attack + split.pool + split.held_out) == sorted(data.all_harmful_tasks())


def test_tokenizer_covers_every_generated_word_and_the_data_is_seeded():
    d = make_demo_data(SMOKE)
    tok = d.tokenizer
    for ex in d.alignment + d.finetune + d.safe_pool + d.heldout_harmful + d.heldout_problems:
        ids = tok(f"{ex.prompt} {ex.response}", add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, ex
    assert make_demo_data(SMOKE).finetune == d.finetune
    harmful = [ex for ex in d.finetune if ex.answer is None]
    assert len(harmful) == round(SMOKE.harmful_ratio * SMOKE.finetune_problems)
    assert all(ex.response.startswith("sure ,") for ex in harmful)
    assert all(ex.response == data.REFUSAL for ex in d.safe_pool)


def test_encoding_puts_the_loss_on_the_response_only():
    d = make_demo_data(SMOKE)
    tok = d.tokenizer
    ex = d.heldout_problems[0]
    (row,) = encode(tok, [ex])
    answer = [i for i in row["labels"] if i != -100]
    assert tok.decode(answer[:-1]) == tok.decode(tok(ex.response, add_special_tokens=False)["input_ids"])
    assert answer[-1] == tok.eos_token_id
    batch = collate(encode(tok, d.heldout_problems[:3]), tok.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    gen = prompt_batch(tok, [d.heldout_problems[0].prompt, "how do i fix a flat tire ?"])
    assert (gen["attention_mask"][:, -1] == 1).all()  # left-padded: prompts end together


def test_table_lists_base_and_every_method():
    base = {"asr": 0.0, "utility": 0.9}
    methods = {n: {"asr": 0.5, "utility": 0.8, "projections": 3, "seconds": 1.5} for n in ("sft", "spard")}
    table = format_table(base, methods)
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["aligned", "sft", "spard"]


def test_an_attack_is_bit_identical_for_a_seed_and_differs_for_another():
    """Stronger than comparing the (coarse) smoke metrics: the adapter weights and SPAG's safety
    loss at every step must repeat exactly."""
    import torch
    from dataclasses import replace

    from _demo.attack import run_attack
    from _demo.methods import Method
    from _demo.model import ModelSize, build_model

    d = make_demo_data(SMOKE)
    model = build_model(d.tokenizer, ModelSize(hidden=32, layers=1), seed=0)
    method = Method("test", "dpp", {"trust_region": None})

    def attack(seed: int):
        config = replace(SMOKE, seed=seed, tau=0.0)  # tau 0: every step projects
        return run_attack(model, d.tokenizer, d.finetune, method, d.safe_pool[:4], config, desc="t", progress=False)

    first, again, other = attack(0), attack(0), attack(1)
    assert first.projections == len(first.safety_losses) > 0
    assert first.safety_losses == again.safety_losses
    weights = [(k, v) for k, v in first.model.state_dict().items() if "lora_" in k]
    assert weights
    again_weights = again.model.state_dict()
    assert all(torch.equal(v, again_weights[k]) for k, v in weights)
    assert other.safety_losses != first.safety_losses
