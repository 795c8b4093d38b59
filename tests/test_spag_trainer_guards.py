"""What SPAGTrainer and attach_spag refuse up front, and what they keep in step with the optimizer.

Safety rows are checked against the model's positions whatever tau is; a row whose ``"response"``
sits beside ``"safe"`` and a DataFrame are refused with what to do; ``spag_config`` shows the
values the optimizer runs after a resume; attaching twice logs once (tiny Llama, CPU).
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from spag_optim import SafetyBatches, SPAGOptimizer  # noqa: E402
from spag_optim.integrations.trainer import (  # noqa: E402
    SPAGLoggingCallback,
    SPAGTrainer,
    TrainerSafetyClosure,
    attach_spag,
    find_spag_optimizer,
)
from spag_optim.warnings import ReplacedHyperparameterWarning  # noqa: E402

from helpers.hf_tiny import SAFE_PAIRS, UTILITY_TEXTS, tokenized, tokenizer  # noqa: E402
from helpers.tiny_lm import tiny_causal_lm  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def arguments(out, **overrides):
    return TrainingArguments(
        **{
            "output_dir": str(out),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-2,
            "report_to": [],
            "save_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
            **overrides,
        }
    )


def build(out, tok, model, safety, spag=None, **overrides):
    return SPAGTrainer(
        model=model,
        args=arguments(out, **overrides),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        safety=safety,
        spag=spag,
        targets="given",  # a random tiny model says no refusal: calibrate on the given ones
    )


def longest_row(tok):
    return max(len(row["input_ids"]) for row in SafetyBatches.from_pairs(SAFE_PAIRS, tok).data)


def test_a_response_beside_safe_is_refused_before_the_trainer_is_built(tmp_path, monkeypatch):
    tok = tokenizer()
    rows = [{"prompt": p, "safe": r, "response": "UNSAFEMARKER"} for p, r in SAFE_PAIRS]
    built = []
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: built.append(self))
    with pytest.raises(TypeError, match="both 'response' and 'safe'") as error:
        build(tmp_path, tok, tiny_causal_lm(tok), rows, {"tau": 0.5})
    assert built == [] and "UNSAFEMARKER" not in str(error.value)


@pytest.mark.parametrize("tau", [0.5, "calibrate"])
def test_rows_longer_than_the_models_positions_are_refused_whatever_tau_is(tmp_path, tau):
    """With a number tau a tiny Llama used to train on rows past its positions without a word."""
    tok = tokenizer()
    model = tiny_causal_lm(tok, max_positions=longest_row(tok) - 1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        build(tmp_path, tok, model, SAFE_PAIRS, {"tau": tau})


def test_attach_spag_refuses_rows_longer_than_the_models_positions(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok, max_positions=longest_row(tok) - 1)
    closure = TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok)
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizers=(SPAGOptimizer(torch_adamw(model), closure, tau=0.5), None),
    )
    with pytest.raises(ValueError, match="max_position_embeddings"):
        attach_spag(trainer, tau=0.7)
    assert find_spag_optimizer(trainer.optimizer).tau == 0.5


def torch_adamw(model):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_spag_config_shows_the_checkpoints_values_after_a_resume(tmp_path):
    """The optimizer runs the checkpoint's tau and K after a resume; spag_config kept showing the
    constructor's."""
    tok = tokenizer()
    saved = {"tau": 1.5, "projection_iterations": 2}
    build(
        tmp_path / "a",
        tok,
        tiny_causal_lm(tok),
        SAFE_PAIRS,
        saved,
        save_strategy="steps",
        save_steps=1,
    ).train()
    resumed = build(tmp_path / "b", tok, tiny_causal_lm(tok), SAFE_PAIRS, {"tau": 0.5})
    assert resumed.spag_config.tau == 0.5
    with pytest.warns(ReplacedHyperparameterWarning):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    spag = find_spag_optimizer(resumed.optimizer)
    assert (spag.tau, spag.projection_iterations) == (1.5, 2)
    assert (resumed.spag_config.tau, resumed.spag_config.projection_iterations) == (1.5, 2)


@pytest.mark.parametrize("spelling", ["Calibrate", "CALIBRATE"])
def test_calibrate_in_any_case_calibrates(tmp_path, spelling):
    tok = tokenizer()
    trainer = build(tmp_path, tok, tiny_causal_lm(tok), SAFE_PAIRS, {"tau": spelling})
    assert isinstance(trainer.spag_config.tau, float) and trainer.spag_config.tau > 0
    spag = find_spag_optimizer(trainer.create_optimizer())
    spag.tau = 0.0
    attach_spag(trainer, tau=spelling, targets="given")
    assert spag.tau == pytest.approx(trainer.spag_config.tau, rel=1e-6) and spag.tau > 0


def test_a_dataframe_of_rows_says_how_to_pass_it(tmp_path):
    """A DataFrame iterates over its column names: it was refused as 'safety pair 0 is a str'."""
    pandas = pytest.importorskip("pandas")
    tok = tokenizer()
    frame = pandas.DataFrame([{"prompt": p, "safe": r} for p, r in SAFE_PAIRS])
    with pytest.raises(TypeError, match=r"DataFrame.*to_dict\('records'\)"):
        build(tmp_path, tok, tiny_causal_lm(tok), frame, {"tau": 0.5})
    with pytest.raises(TypeError, match=r"DataFrame.*to_dict\('records'\)"):
        SafetyBatches.from_pairs(frame, tok)
    rows = SafetyBatches.from_pairs(frame.to_dict("records"), tok).data
    assert rows == SafetyBatches.from_pairs(SAFE_PAIRS, tok).data


def test_attaching_twice_logs_once(tmp_path):
    tok = tokenizer()
    trainer = build(tmp_path, tok, tiny_causal_lm(tok), SAFE_PAIRS, {"tau": 0.5})
    trainer.create_optimizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = attach_spag(trainer)
        second = attach_spag(trainer)
    callbacks = [
        c for c in trainer.callback_handler.callbacks if isinstance(c, SPAGLoggingCallback)
    ]
    assert callbacks == [first] and second is first
    trainer.train()
    assert len(first.history) == trainer.state.global_step == 2
