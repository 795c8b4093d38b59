"""End-to-end and unit tests of examples/quickstart.py at its ``--smoke`` size (seconds, not
results): the results.json schema with per-seed rows, the verdicts, determinism for a seed, the
aligned-model cache and the shipped aligned models, --methods, and one attack's bit-identity
(the baselines are in test_quickstart_baselines.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _demo import data  # noqa: E402
from _demo.config import ATTACKS, SMOKE, DemoConfig, with_attack  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.encoding import encode, with_bos  # noqa: E402
from _demo.methods import METHODS, Method, resolve_methods  # noqa: E402
from _demo.report import format_table, summarize, write_plot  # noqa: E402
from spag_optim.safety_pairs import PaddingCollator  # noqa: E402

from helpers.quickstart_run import BASELINES, SUMMARY, quickstart, run_smoke  # noqa: E402


def _strip(methods: dict) -> dict:
    return {
        n: {
            k: (
                [{f: x for f, x in row.items() if f != "seconds"} for row in v]
                if k == "seeds"
                else v
            )
            for k, v in r.items()
        }
        for n, r in methods.items()
    }


def _without_seconds(results: dict) -> dict:
    config = {k: v for k, v in results["config"].items() if k not in ("cached", "cache")}
    attacks = {a: {**r, "methods": _strip(r["methods"])} for a, r in results["attacks"].items()}
    return {
        "attacks": attacks,
        "methods": _strip(results["methods"]),
        "base": results["base"],
        "config": config,
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One smoke run with an empty cache, two seeds and two methods (one with SPAG, one without)."""
    out = tmp_path_factory.mktemp("first")
    return out, run_smoke(out, "--methods", "sft,spard_no_trust", "--seeds", "3,5")


def test_results_json_has_exactly_the_documented_schema_with_a_row_per_seed(first_run):
    out, results = first_run
    assert set(results) == {"attacks", "methods", "base", "config"}
    assert list(results["attacks"]) == ["standard", "strong"]  # the default: both attacks
    for attack, res in results["attacks"].items():
        assert set(res) == {"config", "base", "methods"}
        expected = {
            k: v for k, v in with_attack(SMOKE, attack).to_dict().items() if k != "seed"
        } | {"seeds": [3, 5]}
        assert res["config"] == expected
        assert list(res["methods"]) == ["sft", "spard_no_trust"]
        for name, r in res["methods"].items():
            assert set(r) == SUMMARY, name
            assert [row["seed"] for row in r["seeds"]] == [3, 5]
            for row in r["seeds"]:
                assert set(row) == {
                    "seed",
                    "asr",
                    "utility",
                    "refusal_prob",
                    "projections",
                    "seconds",
                }
                assert (
                    0.0 <= row["asr"] <= 1.0
                    and 0.0 <= row["utility"] <= 1.0
                    and 0.0 <= row["refusal_prob"] <= 1.0
                )
                assert isinstance(row["projections"], int) and row["seconds"] > 0.0
            assert r["asr"] == pytest.approx(sum(row["asr"] for row in r["seeds"]) / 2)
            assert r["asr_ci"] is not None and r["asr_ci"] >= 0.0  # two seeds: an interval
            assert r["vs_spard"] is None  # spard did not run
        assert res["methods"]["sft"]["vs_sft"] is None
        assert res["methods"]["spard_no_trust"]["vs_sft"] in ("lower", "higher", "tie")
        assert all(row["projections"] == 0 for row in res["methods"]["sft"]["seeds"])  # no SPAG
        assert set(res["base"]) == {"asr", "utility", "refusal_prob", "seeds"}
    # The top level keeps the first attack's numbers, as before there were several attacks.
    assert results["methods"] == results["attacks"]["standard"]["methods"]
    assert results["base"] == results["attacks"]["standard"]["base"]
    config = results["config"]
    assert config["seeds"] == [3, 5] and config["methods"] == ["sft", "spard_no_trust"]
    assert config["attacks"] == ["standard", "strong"]
    assert config["cached"] == [False, False]


def test_the_default_run_is_several_seeds_of_a_compact_set_of_methods():
    args = quickstart.parse_args([])
    assert resolve_methods(args.methods) == ["sft", "penalty", "spard"]
    assert len(quickstart.parse_seeds(args.seeds)) >= 5
    assert args.attacks == "standard,strong"


def test_the_verdicts_are_paired_by_seed():
    """A difference that is the same sign on every seed decides; one that is not stays a tie,
    even where the marginal means differ a lot."""

    def rows(asrs):
        return [
            {"seed": s, "asr": a, "utility": 1.0, "refusal_prob": 1 - a} for s, a in enumerate(asrs)
        ]

    got = summarize(
        {
            "sft": rows([1.0, 1.0, 1.0]),
            "spard": rows([0.0, 0.1, 0.0]),
            "penalty": rows([0.0, 1.0, 0.0]),
        }
    )
    assert got["spard"]["vs_sft"] == "lower" and got["sft"]["vs_spard"] == "higher"
    assert got["penalty"]["vs_sft"] == "tie" and got["penalty"]["vs_spard"] == "tie"
    assert got["spard"]["vs_spard"] is None


def test_attack_presets_standard_is_the_default_run_and_the_others_are_stronger():
    assert with_attack(DemoConfig(), "standard") == DemoConfig()
    for name in ("strong", "heavy"):
        c = with_attack(DemoConfig(), name)
        assert c.finetune_epochs > DemoConfig().finetune_epochs
        assert (
            c.finetune_lr >= DemoConfig().finetune_lr
            and c.harmful_ratio >= DemoConfig().harmful_ratio
        )
        assert (c.finetune_lr, c.harmful_ratio) != (
            DemoConfig().finetune_lr,
            DemoConfig().harmful_ratio,
        )
    with pytest.raises(ValueError, match="standard, strong, heavy"):
        with_attack(DemoConfig(), "extreme")


def test_the_harmful_pool_is_large_enough_for_every_preset_at_full_size():
    for name in ATTACKS:
        config = with_attack(DemoConfig(), name)
        d = make_demo_data(config)
        harmful = [ex for ex in d.finetune if ex.answer is None]
        assert len(harmful) == round(config.harmful_ratio * config.finetune_problems)
        assert len(set(harmful)) == len(harmful)
    split = data.harmful_splits(0)
    attack_examples = len(data.harmful_examples(split.attack, (data.QUESTION,), comply=True))
    assert attack_examples >= 0.3 * DemoConfig().finetune_problems  # what the 0.3 needed


def test_an_unknown_attack_is_refused_with_the_presets(capsys):
    assert quickstart.main(["--attacks", "standard,extreme", "--out", "unused"]) == 2
    assert "standard, strong, heavy" in capsys.readouterr().err


def test_first_run_caches_the_aligned_model_as_safetensors(first_run):
    out, results = first_run
    folder = Path(results["config"]["cache"][0])
    assert folder.parent == out / "cache"
    assert (folder / "model.safetensors").is_file()


def test_second_run_loads_the_cache_and_reproduces_every_number(first_run, tmp_path):
    out, first = first_run
    second = run_smoke(
        tmp_path,
        "--methods",
        "sft,spard_no_trust",
        "--seeds",
        "3,5",
        "--cache-dir",
        str(out / "cache"),
    )
    assert second["config"]["cached"] == [True, True]
    assert _without_seconds(second) == _without_seconds(first)


def test_no_cache_retrains_to_the_same_weights(first_run, tmp_path):
    out, first = first_run
    again = run_smoke(
        tmp_path,
        "--methods",
        "sft",
        "--seeds",
        "3",
        "--cache-dir",
        str(out / "cache"),
        "--no-cache",
    )
    assert again["config"]["cached"] == [False]
    assert again["base"]["seeds"][0] == first["base"]["seeds"][0]
    assert (
        _strip(again["methods"])["sft"]["seeds"][0] == _strip(first["methods"])["sft"]["seeds"][0]
    )


def test_a_different_seed_gets_its_own_cache_entry(first_run, tmp_path):
    out, first = first_run
    other = run_smoke(
        tmp_path, "--methods", "sft", "--seed", "4", "--cache-dir", str(out / "cache")
    )
    assert other["config"]["cached"] == [False]
    assert other["config"]["cache"][0] not in first["config"]["cache"]


def test_the_shipped_aligned_models_cover_the_default_seeds_and_match_their_checksums():
    """If the default config or the vocabulary changes, the shipped models no longer match its key:
    this fails until they are retrained (``python examples/quickstart.py --no-cache``, then copy;
    ``--numerics portable`` too, for the portable ones)."""
    from _demo.alignment import SHIPPED, cache_key, verify_shipped

    listed = {line.split()[1] for line in (SHIPPED / "SHA256SUMS").read_text().splitlines()}
    folders = sorted(p for p in SHIPPED.iterdir() if p.is_dir())
    assert listed == {f"{f.name}/{p.name}" for f in folders for p in f.iterdir()}
    for seed in quickstart.parse_seeds(quickstart.parse_args([]).seeds):
        config = replace(DemoConfig(), seed=seed)
        for numerics in ("native", "portable"):
            key = cache_key(config, make_demo_data(config), numerics)
            assert (SHIPPED / f"aligned-{key}") in folders, (seed, numerics)
    assert len(folders) == 2 * len(quickstart.parse_seeds(quickstart.parse_args([]).seeds))
    for folder in folders:
        verify_shipped(folder)


def test_a_shipped_model_is_loaded_without_training_and_a_tampered_one_is_refused(
    tmp_path, monkeypatch
):
    import shutil

    from _demo import alignment

    config = replace(DemoConfig(), seed=0)
    d = make_demo_data(config)
    model, folder, loaded = alignment.aligned_model(
        config, d, tmp_path / "cache", shipped=True, progress=False
    )
    assert loaded and folder.parent == alignment.SHIPPED
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached
    copy = tmp_path / "shipped"
    shutil.copytree(alignment.SHIPPED, copy)
    weights = copy / folder.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(alignment, "SHIPPED", copy)
    with pytest.raises(
        ValueError, match="model.safetensors does not match its SHA-256.*--no-cache"
    ):
        alignment.aligned_model(config, d, tmp_path / "cache", shipped=True, progress=False)


def test_results_png_is_written_when_matplotlib_imports(first_run):
    pytest.importorskip("matplotlib")
    out, _ = first_run
    assert (out / "results.png").stat().st_size > 0


def test_plot_is_skipped_with_a_message_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    rows = [{"seed": 0, "asr": 1.0, "utility": 1.0, "refusal_prob": 0.0}]
    attacks = {
        "standard": {
            "config": {},
            "base": summarize({"b": rows})["b"],
            "methods": summarize({"sft": rows}),
        }
    }
    assert write_plot(tmp_path, attacks, {"standard": {"sft": []}}, tau=0.01) is None
    assert not (tmp_path / "results.png").exists()


def test_methods_all_lists_every_method_and_subsets_keep_order():
    assert resolve_methods("all") == list(METHODS)
    assert {
        "sft",
        "spag_random",
        "spag_top_relevance",
        "spard",
        "spard_lr_trust",
        "spard_authors_code",
    } <= set(METHODS)
    assert set(BASELINES) <= set(METHODS)
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
    assert tok.decode(answer[:-1]) == tok.decode(
        tok(ex.response, add_special_tokens=False)["input_ids"]
    )
    assert answer[-1] == tok.eos_token_id
    batch = PaddingCollator(tok.pad_token_id)(encode(tok, d.heldout_problems[:3]))
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    # What generation continues from is exactly the training row's prompt part, BOS included.
    prompt_ids = tok(with_bos(tok)(ex.prompt), add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tok.bos_token_id
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    assert row["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)


def test_table_gives_mean_interval_refusal_and_verdicts_in_words_per_attack():
    def rows(asrs):
        return [
            {"seed": s, "asr": a, "utility": 0.8, "refusal_prob": 1 - a} for s, a in enumerate(asrs)
        ]

    methods = summarize({"sft": rows([1.0, 1.0, 1.0]), "spard": rows([0.0, 0.25, 0.5])})
    base = summarize({"b": rows([0.0, 0.0, 0.0])})["b"]
    text = format_table(
        {a: {"config": {}, "base": base, "methods": methods} for a in ("standard", "strong")}
    )
    lines = text.splitlines()
    assert lines[0].startswith("attack: standard (3 seeds") and any(
        x.startswith("attack: strong") for x in lines
    )
    spard = next(x for x in lines if x.strip().startswith("spard"))
    assert spard.split()[1:4] == ["0.25", "±", f"{methods['spard']['asr_ci']:.2f}"]
    assert spard.endswith("safer than sft")
    sft = next(x for x in lines if x.strip().startswith("sft"))
    assert sft.endswith("less safe than spard")


def test_an_attack_is_bit_identical_for_a_seed_and_differs_for_another():
    """Stronger than comparing the (coarse) smoke metrics: the adapter weights and SPAG's safety
    loss at every step must repeat exactly."""
    import torch

    from _demo.attack import run_attack
    from _demo.model import ModelSize, build_model

    d = make_demo_data(SMOKE)
    model = build_model(d.tokenizer, ModelSize(hidden=32, layers=1), seed=0)
    method = Method("test", "dpp", {"trust_region": None})

    def attack(seed: int):
        config = replace(SMOKE, seed=seed, tau=0.0)  # tau 0: every step projects
        return run_attack(
            model,
            d.tokenizer,
            d.finetune,
            method,
            d.safe_pool[:4],
            config,
            desc="t",
            progress=False,
        )

    first, again, other = attack(0), attack(0), attack(1)
    assert first.projections == len(first.safety_losses) > 0
    assert first.safety_losses == again.safety_losses
    weights = [(k, v) for k, v in first.model.state_dict().items() if "lora_" in k]
    assert weights
    again_weights = again.model.state_dict()
    assert all(torch.equal(v, again_weights[k]) for k, v in weights)
    assert other.safety_losses != first.safety_losses
