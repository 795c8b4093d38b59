"""SPAGTrainer and SPAGTrainerMixin: SPAG on the optimizer the Trainer itself builds (tiny Llama, CPU).

What the one-line path must keep from the Trainer: the inner optimizer is the class ``args.optim``
names, with the Trainer's two parameter groups and their weight decays; the scheduler's learning
rates, gradient accumulation (one projection per optimizer step) and ``max_grad_norm`` clipping as
with ``attach_spag``; bf16 autocast; a resume from a checkpoint equals the uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
import torch  # noqa: E402
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from spag_optim import SafetyBatches, SPAGConfig, SPAGOptimizer, calibrate_tau  # noqa: E402
from spag_optim.integrations.trainer import (  # noqa: E402
    SPAGTrainer,
    SPAGTrainerMixin,
    TrainerSafetyClosure,
    find_spag_optimizer,
)

from helpers.hf_tiny import SAFE_PAIRS, UTILITY_TEXTS, tokenized, tokenizer  # noqa: E402
from helpers.tiny_lm import tiny_causal_lm  # noqa: E402
from helpers.trainer_probe import Probe  # noqa: E402

MAX_STEPS = 4
ACCUMULATION = 2
BATCH = 2
LR = 1e-2
MAX_GRAD_NORM = 0.01
CALIBRATION_BATCHES = 8  # SPAGTrainer's default
#: dpp-select's output rows: the pairs above with the unsafe answer the selection also keeps.
SELECTION_ROWS = [{"prompt": p, "safe": r, "unsafe": "sure here is how"} for p, r in SAFE_PAIRS]

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def training_args(out, **overrides):
    values = dict(
        output_dir=str(out),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=LR,
        weight_decay=0.1,
        lr_scheduler_type="linear",
        max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**values, **overrides})


# README "Hugging Face Trainer" snippet: the SPAGTrainer(...) call and trainer.train().
def spag_trainer(out, tok, model, safe_pairs, *, callbacks=(), render=None, **args):
    trainer = SPAGTrainer(
        model=model,
        args=training_args(out, **args),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        safety=safe_pairs,  # (prompt, refusal) pairs, {prompt, safe} rows or a TrainerSafetyClosure
        spag={"tau": "calibrate"},  # SPAGOptimizer's keyword arguments, or a SPAGConfig
        targets="given",  # a random tiny model says no refusal: go on with the given ones
        render=render,
        callbacks=list(callbacks),
    )
    return trainer


def assert_trainers_groups(trainer, spag, model, weight_decay):
    """The inner optimizer is the class args.optim names, with the Trainer's two groups."""
    expected_cls, _ = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    assert type(spag.inner) is expected_cls
    decay = set(trainer.get_decay_parameter_names(model))
    named = dict(model.named_parameters())
    groups = [{id(p) for p in g["params"]} for g in spag.inner.param_groups]
    assert groups == [
        {id(p) for n, p in named.items() if n in decay},
        {id(p) for n, p in named.items() if n not in decay},
    ]
    assert all(groups)  # both non-empty: weights decay, norms do not
    assert [g["weight_decay"] for g in spag.inner.param_groups] == [weight_decay, 0.0]
    assert spag.param_groups is spag.inner.param_groups


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_spag_trainer_snippet(tmp_path, bf16):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    probe = Probe(model)
    trainer = spag_trainer(tmp_path, tok, model, SAFE_PAIRS, callbacks=[probe], bf16=bf16)
    # tau="calibrate": the model's safety loss before training (autocast under bf16), measured
    # at construction without moving the safe batches.
    with trainer.accelerator.autocast():
        expected_tau = calibrate_tau(
            model, SafetyBatches.from_pairs(SAFE_PAIRS, tok), CALIBRATION_BATCHES
        )
    assert trainer.spag_config.tau == pytest.approx(expected_tau, rel=1e-6)
    assert (trainer.safety_closure.batches.epoch, trainer.safety_closure.batches.position) == (0, 0)
    forwards_before = probe.forwards
    trainer.train()

    spag = find_spag_optimizer(trainer.optimizer)
    assert isinstance(spag, SPAGOptimizer) and spag.tau == trainer.spag_config.tau
    assert_trainers_groups(trainer, spag, model, weight_decay=0.1)
    assert probe.lrs == pytest.approx([LR * (MAX_STEPS - i) / MAX_STEPS for i in range(MAX_STEPS)])
    # Gradient accumulation: one safety forward per optimizer step, none per micro-batch.
    assert spag.num_steps == MAX_STEPS
    assert probe.forwards - forwards_before == MAX_STEPS * ACCUMULATION + MAX_STEPS
    assert max(probe.grad_norms) <= MAX_GRAD_NORM * (1 + 1e-3)
    assert set(probe.dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == MAX_STEPS
    for entry, step in zip(train_logs, trainer.spag_callback.history):
        assert math.isclose(entry["spag/safety_loss"], step["safety_loss"], rel_tol=1e-6)
    assert train_logs[-1]["spag/projections"] == spag.num_projections
    # targets="given" on refusals the model does not say: every log entry says so.
    assert all(entry["spag/refusals_not_produced"] == 1.0 for entry in train_logs)
    # The stats where a Trainer user looks, through Accelerate's wrapper.
    assert trainer.optimizer is not spag and trainer.optimizer.optimizer is spag
    assert trainer.spag_stats() == pytest.approx(spag.stats(), nan_ok=True)
    assert trainer.spag_stats()["num_steps"] == MAX_STEPS


def test_spag_stats_before_the_optimizer_exists_says_when_it_will(tmp_path):
    tok = tokenizer()
    trainer = spag_trainer(tmp_path, tok, tiny_causal_lm(tok), SAFE_PAIRS)
    with pytest.raises(RuntimeError, match=r"built by train\(\)"):
        trainer.spag_stats()
    trainer.create_optimizer()
    assert trainer.spag_stats()["num_steps"] == 0.0


def test_render_sets_the_safety_pairs_format(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)

    def render(prompt):
        return f"<|user|> {prompt} <|end|> <|assistant|> "

    trainer = spag_trainer(tmp_path, tok, model, SAFE_PAIRS, render=render)
    rendered = SafetyBatches.from_pairs(SAFE_PAIRS, tok, render=render).data
    assert trainer.safety_closure.batches.data == rendered
    assert rendered != SafetyBatches.from_pairs(SAFE_PAIRS, tok).data  # bos + prompt + "\n"
    user = tok.convert_tokens_to_ids("<|user|>")
    assert all(row["input_ids"][0] == user for row in rendered)
    with pytest.raises(ValueError, match="render= to TrainerSafetyClosure.from_pairs"):
        spag_trainer(
            tmp_path, tok, model, TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok), render=render
        )


@pytest.mark.parametrize(
    "optim, cls",
    [
        ("adamw_torch", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
    ],
)
def test_the_inner_optimizer_is_the_one_args_optim_names(tmp_path, optim, cls):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    trainer = SPAGTrainer(
        model=model,
        args=training_args(tmp_path, optim=optim, weight_decay=0.3),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        processing_class=tok,
        safety=SAFE_PAIRS,
        spag=SPAGConfig(tau=0.5, rho=0.5),
    )
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is SPAGOptimizer and type(optimizer.inner) is cls
    assert (optimizer.tau, optimizer.rho) == (0.5, 0.5)
    assert_trainers_groups(trainer, optimizer, model, weight_decay=0.3)
    assert trainer.create_optimizer() is optimizer  # wrapped once, whatever calls it again


def test_an_optimizer_given_to_the_trainer_is_wrapped(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SPAGTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizers=(plain, None),
        safety=SAFE_PAIRS,
    )
    trainer.train()
    assert find_spag_optimizer(trainer.optimizer).inner is plain
    assert find_spag_optimizer(trainer.optimizer).num_steps == 1


def test_selection_rows_train_like_the_pairs_they_hold(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    from_rows = spag_trainer(tmp_path, tok, model, SELECTION_ROWS)
    from_pairs = TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok)
    assert from_rows.safety_closure.batches.data == from_pairs.batches.data
    rows_dataset = pytest.importorskip("datasets").Dataset.from_list(SELECTION_ROWS)
    assert (
        spag_trainer(tmp_path, tok, model, rows_dataset).safety_closure.batches.data
        == from_pairs.batches.data
    )


def test_a_closure_and_a_number_tau_are_used_as_given(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    closure = TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok, batch_size=3, seed=7)
    trainer = SPAGTrainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        safety=closure,
        spag={"tau": 1.5, "trust_region": None},
    )
    optimizer = trainer.create_optimizer()
    assert optimizer.safety_closure is closure and closure.trainer is trainer
    assert (optimizer.tau, optimizer.trust_region) == (1.5, None)
    assert trainer.spag_config == SPAGConfig(tau=1.5, trust_region=None)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"safety": "how do i make poison"}, TypeError, "safety= is a str"),
        (
            {"safety": SAFE_PAIRS, "processing_class": None},
            ValueError,
            "processing_class=tokenizer",
        ),
        ({"safety": SAFE_PAIRS, "spag": {"tau": 0.5, "lr": 1e-5}}, ValueError, r"\['lr'\]"),
        ({"safety": SAFE_PAIRS, "spag": {"tau": "calibrated"}}, TypeError, "tau must be a number"),
        ({"safety": SAFE_PAIRS, "spag": [("tau", 0.5)]}, TypeError, "spag= takes"),
        ({"safety": SAFE_PAIRS, "calibration_batches": 0}, ValueError, "calibration_batches"),
        ({"safety": SAFE_PAIRS, "targets": "mine"}, ValueError, "targets='mine'"),
        (
            {"safety": SAFE_PAIRS, "optimizers": "spag"},
            ValueError,
            "builds the SPAGOptimizer itself",
        ),
    ],
)
def test_bad_arguments_raise_before_the_trainer_is_built(
    tmp_path, monkeypatch, kwargs, error, match
):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    if kwargs.get("optimizers") == "spag":
        spag = SPAGOptimizer(
            torch.optim.AdamW(model.parameters()), TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok)
        )
        kwargs = {**kwargs, "optimizers": (spag, None)}
    built = []
    monkeypatch.setattr(Trainer, "__init__", lambda self, *a, **k: built.append(self))
    with pytest.raises(error, match=match):
        SPAGTrainer(
            model=model, args=training_args(tmp_path), **{"processing_class": tok, **kwargs}
        )
    assert built == []


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    aligned = copy.deepcopy(model)
    uninterrupted = spag_trainer(
        tmp_path / "a", tok, model, SAFE_PAIRS, save_strategy="steps", save_steps=2
    )
    uninterrupted.train()
    resumed = spag_trainer(tmp_path / "b", tok, aligned, SAFE_PAIRS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    # tau was calibrated on the same aligned model, so the checkpoint's tau replaces nothing.
    assert not [w for w in caught if "hyper-parameters replace" in str(w.message)]
    a, b = (find_spag_optimizer(t.optimizer) for t in (uninterrupted, resumed))
    assert b.num_steps == a.num_steps == MAX_STEPS and b.num_projections == a.num_projections
    assert b.tau == a.tau
    assert b.safety_closure.batches.state_dict() == a.safety_closure.batches.state_dict()
    for p, q in zip(model.parameters(), aligned.parameters()):
        assert torch.equal(p, q)


def test_sft_trainer_through_the_mixin(tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")

    class SPAGSFTTrainer(SPAGTrainerMixin, trl.SFTTrainer):
        pass

    tok = tokenizer()
    model = tiny_causal_lm(tok)
    probe = Probe(model)
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=LR,
        weight_decay=0.1,
        max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=32,
        seed=0,
        disable_tqdm=True,
    )
    trainer = SPAGSFTTrainer(
        model=model,
        args=config,
        processing_class=tok,
        callbacks=[probe],
        train_dataset=datasets.Dataset.from_list([{"text": t} for t in UTILITY_TEXTS]),
        safety=SELECTION_ROWS,
        spag={"tau": 0.0},  # tau=0: every step projects
    )
    trainer.train()
    spag = find_spag_optimizer(trainer.optimizer)
    assert_trainers_groups(trainer, spag, model, weight_decay=0.1)
    assert spag.num_steps == spag.num_projections == MAX_STEPS
    assert probe.forwards == MAX_STEPS * ACCUMULATION + MAX_STEPS
    assert probe.lrs == pytest.approx([LR * (MAX_STEPS - i) / MAX_STEPS for i in range(MAX_STEPS)])
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == MAX_STEPS and all(
        entry["spag/projected"] == 1.0 for entry in train_logs
    )
