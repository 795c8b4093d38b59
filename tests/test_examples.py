"""End-to-end runs of the two fine-tuning examples on tiny random models, plus their shared pieces.

The models (2-layer Llama and Qwen2) and their word-level tokenizers are built in-process from the
synthetic fixtures in ``tests/fixtures/`` (their "unsafe" fields are placeholders), so nothing here
needs a network, a GPU or the real datasets.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

from lora_targets import DEFAULT_LORA_TARGETS, find_lora_targets  # noqa: E402
from spag_optim.safety_pairs import PaddingCollator, encode_pair, format_prompt  # noqa: E402

from helpers.tiny_lm import save_tiny_lm  # noqa: E402

cli = importlib.import_module("finetune_cli")
data = importlib.import_module("finetune_data")


def fixture_texts() -> list[str]:
    texts = []
    for path in FIXTURES.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.extend(v for v in json.loads(line).values() if isinstance(v, str))
    return texts


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """A 2-layer random Llama and Qwen2 (with a chat template), saved once for this module."""
    texts = fixture_texts()
    return {
        arch: save_tiny_lm(tmp_path_factory.mktemp(f"tiny_{arch}"), arch, texts)
        for arch in ("llama", "qwen2")
    }


def base_argv(model: str, out: Path) -> list[str]:
    return [
        "--model",
        model,
        "--train",
        str(FIXTURES / "gsm8k_train.jsonl"),
        "--safe-pool",
        str(FIXTURES / "safe_pool.jsonl"),
        "--harmful",
        str(FIXTURES / "harmful_attack.jsonl"),
        "--eval-harmful",
        str(FIXTURES / "harmful_eval.jsonl"),
        "--eval-utility",
        str(FIXTURES / "gsm8k_test.jsonl"),
        "--safe-ratio",
        "0.2",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "4",
        "--eval-limit",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def check_adapter_loads(model_path: str, adapter_dir: str) -> None:
    """The saved adapter loads onto the base model and carries trained (non-zero) LoRA B weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert os.path.isfile(os.path.join(adapter_dir, "adapter_config.json"))
    base = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
    loaded = PeftModel.from_pretrained(base, adapter_dir)
    lora_b = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora_b, "no LoRA weights in the saved adapter"
    # LoRA initialises B to zero; training moved it, so a non-zero B proves the trained weights.
    assert any(bool(p.abs().sum() > 0) for p in lora_b)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("script", ["lora_plain_loop", "hf_trainer"])
def test_example_end_to_end(script, arch, tiny_models, tmp_path, capsys):
    tiny_model = tiny_models[arch]
    module = importlib.import_module(script)
    out = tmp_path / "run"
    metrics = module.main(base_argv(tiny_model, out))

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["method"] == "spard"
    assert 0.0 <= written["asr"] <= 1.0 and 0.0 <= written["accuracy"] <= 1.0
    assert written["n_eval_harmful"] == 4 and written["n_eval_utility"] == 4  # --eval-limit
    assert written["steps"] == 3
    assert written["task_rows"] == 30 and written["attack_rows"] == 3  # 10% of 30
    assert written["safe_selected"] == math.ceil(0.2 * 33)
    # A random model's safety loss (~ln vocab) is far above tau = 0.2: every step projects.
    assert written["projections"] == 3 and written["nonfinite_safety_steps"] == 0
    assert math.isfinite(written["final_safety_loss"]) and written["final_safety_loss"] > 0.2
    check_adapter_loads(tiny_model, written["adapter"])

    printed = capsys.readouterr().out
    key = "spag/safety_loss" if script == "hf_trainer" else "'safety_loss'"
    assert key in printed, f"SPAG stats were not logged by {script}"
    assert "PLACEHOLDER" not in printed  # the attack's unsafe text is never printed


@pytest.mark.parametrize("script, arch", [("lora_plain_loop", "qwen2"), ("hf_trainer", "llama")])
def test_no_defense_baseline(script, arch, tmp_path, capsys, tiny_models):
    module = importlib.import_module(script)
    argv = base_argv(tiny_models[arch], tmp_path / "sft") + ["--no-defense"]
    del argv[argv.index("--safe-pool") : argv.index("--safe-pool") + 2]  # not needed for sft
    metrics = module.main(argv)
    assert metrics["method"] == "sft"
    assert "projections" not in metrics and "safe_selected" not in metrics
    assert 0.0 <= metrics["asr"] <= 1.0
    assert "safety_loss" not in capsys.readouterr().out


def test_tau_calibrate_uses_the_models_own_safety_loss(tmp_path, tiny_models):
    module = importlib.import_module("lora_plain_loop")
    metrics = module.main(
        base_argv(tiny_models["llama"], tmp_path / "cal") + ["--tau", "calibrate"]
    )
    # A random model's safety loss is about ln(vocab), far above the default 0.2, and with
    # lr 5e-5 three steps barely move it: the calibrated tau sits right at the measured loss.
    assert metrics["tau"] > 1.0
    assert abs(metrics["tau"] - metrics["final_safety_loss"]) < 0.1


# The data-error tests fail before any model is loaded (data files are read first), so they pass
# a model path that does not exist.
NO_MODEL = "/nonexistent/model"


def test_malformed_train_jsonl_names_the_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    lines = (FIXTURES / "gsm8k_train.jsonl").read_text().splitlines()
    lines[2] = '{"prompt": "unterminated'
    bad.write_text("\n".join(lines) + "\n")
    argv = base_argv(NO_MODEL, tmp_path / "run")
    argv[argv.index("--train") + 1] = str(bad)
    from spard_io import JSONLError

    with pytest.raises(JSONLError, match=r"train\.jsonl:3: not valid JSON"):
        importlib.import_module("lora_plain_loop").main(argv)


def test_harmful_rows_without_unsafe_field_name_the_line(tmp_path):
    bad = tmp_path / "attack.jsonl"
    bad.write_text('{"prompt": "p", "unsafe": "x"}\n{"prompt": "q", "safe": "s"}\n')
    argv = base_argv(NO_MODEL, tmp_path / "run")
    argv[argv.index("--harmful") + 1] = str(bad)
    from spard_io import JSONLError

    with pytest.raises(JSONLError, match=r"attack\.jsonl:2: missing field 'unsafe'"):
        importlib.import_module("hf_trainer").main(argv)


def test_utility_reference_without_a_final_answer_names_the_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"prompt": "p", "answer": "#### 4"}\n\n{"prompt": "q", "answer": "four"}\n')
    argv = base_argv(NO_MODEL, tmp_path / "run")
    argv[argv.index("--eval-utility") + 1] = str(bad)
    from spard_io import JSONLError

    with pytest.raises(JSONLError, match=r"test\.jsonl:3: field 'answer' has no '#### N'"):
        importlib.import_module("lora_plain_loop").main(argv)


def test_harmful_ratio_larger_than_the_attack_file_says_what_to_do(tmp_path):
    argv = base_argv(NO_MODEL, tmp_path / "run") + ["--harmful-ratio", "1.0"]
    with pytest.raises(SystemExit, match="has 12 rows .* needs 30; lower the ratio"):
        importlib.import_module("lora_plain_loop").main(argv)


def test_bad_options_fail_in_the_parser(capsys):
    argv = ["--model", "m", "--train", "t", "--safe-pool", "s"]
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--trust-region", "-1"])
    assert "--trust-region" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--harmful-ratio", "1.5"])
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--train-limit", "0"])
    assert "--train-limit must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused before training, not when evaluation starts
        cli.parse_args("x", argv + ["--max-new-tokens", "0"])
    assert "--max-new-tokens must be >= 1" in capsys.readouterr().err
    args = cli.parse_args("x", argv + ["--trust-region", "none"])
    assert args.trust_region is None
    assert cli.parse_args("x", argv + ["--trust-region", "0.5"]).trust_region == 0.5
    assert cli.parse_args("x", argv).tau == 0.2
    assert cli.parse_args("x", argv + ["--tau", "calibrate"]).tau == "calibrate"
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--tau", "-0.1"])
    assert "--tau must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv[:4])
    assert "--safe-pool is required" in capsys.readouterr().err
    assert cli.parse_args("x", argv[:4] + ["--no-defense"]).safe_pool is None


# ---- shared pieces ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory):
    from transformers import AutoTokenizer

    texts = fixture_texts()
    with_template = AutoTokenizer.from_pretrained(
        save_tiny_lm(tmp_path_factory.mktemp("tmpl"), "llama", texts)
    )
    plain = AutoTokenizer.from_pretrained(
        save_tiny_lm(tmp_path_factory.mktemp("plain"), "llama", texts, chat_template=False)
    )
    return with_template, plain


def test_format_prompt_uses_the_chat_template_when_there_is_one(tokenizers_pair):
    with_template, plain = tokenizers_pair
    assert format_prompt(with_template, "Tom has 3 apples") == (
        "<|user|> Tom has 3 apples <|end|> <|assistant|> "
    )
    assert format_prompt(plain, "Tom has 3 apples") == "<s>Tom has 3 apples\n"


def test_encode_example_masks_the_prompt_and_ends_with_eos(tokenizers_pair):
    tok = tokenizers_pair[0]
    prompt_ids = tok(format_prompt(tok, "Tom has 3 apples"), add_special_tokens=False)["input_ids"]
    answer_ids = tok("Tom has 3 apples .", add_special_tokens=False)["input_ids"]
    row = encode_pair(tok, "Tom has 3 apples", "Tom has 3 apples .", 512)
    assert row["input_ids"] == prompt_ids + answer_ids + [tok.eos_token_id]
    assert row["labels"] == [-100] * len(prompt_ids) + answer_ids + [tok.eos_token_id]

    short = encode_pair(tok, "Tom has 3 apples", "Tom has 3 apples .", len(prompt_ids) + 2)
    assert short["labels"] == [-100] * len(prompt_ids) + answer_ids[:2]
    assert encode_pair(tok, "Tom has 3 apples", "x", len(prompt_ids)) is None


def test_encode_rows_fails_when_every_prompt_is_too_long(tokenizers_pair):
    with pytest.raises(ValueError, match="raise --max-length"):
        data.encode_rows(tokenizers_pair[0], [("Tom has 3 apples", "7")], 2, "fine-tuning")


def test_collate_pads_right_and_masks_padding():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = PaddingCollator(pad_token_id=1)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_find_lora_targets(arch, tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], local_files_only=True)
    assert find_lora_targets(model) == list(DEFAULT_LORA_TARGETS)
    with pytest.raises(SystemExit, match="pass some with --lora-targets"):
        find_lora_targets(model, wanted=("query_key_value",))


@pytest.mark.parametrize(
    "script, arch, defense",
    [
        ("lora_plain_loop", "qwen2", "guardspace"),  # Qwen2: q/k/v carry biases
        ("hf_trainer", "llama", "guardspace+spard"),
    ],
)
def test_guardspace_defenses(script, arch, defense, tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM

    from spag_optim.guardspace import GuardSpaceLinear, load_guardspace

    module = importlib.import_module(script)
    metrics = module.main(
        base_argv(tiny_models[arch], tmp_path / "gs") + ["--defense", defense, "--lora-r", "4"]
    )
    assert metrics["method"] == defense
    assert ("projections" in metrics) == (defense == "guardspace+spard")
    base = AutoModelForCausalLM.from_pretrained(tiny_models[arch], local_files_only=True)
    loaded = load_guardspace(base, os.path.join(metrics["adapter"], "guardspace.pt"))
    layers = [m for m in loaded.modules() if isinstance(m, GuardSpaceLinear)]
    assert layers and any(not torch.equal(m.adapter_B, m.init_B) for m in layers)  # trained


def test_defense_flag_is_checked():
    argv = base_argv("m", Path("o"))
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--no-defense", "--defense", "guardspace"])
    with pytest.raises(SystemExit):
        cli.parse_args("x", argv + ["--guardspace-null-energy", "2"])
    assert (
        cli.parse_args("x", argv + ["--guardspace-null-energy", "paper"]).guardspace_null_energy
        is None
    )
