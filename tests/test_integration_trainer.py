"""SPAG inside Hugging Face ``Trainer`` and TRL's ``SFTTrainer`` (tiny Llama, CPU).

What the Trainer must not break: the learning rate its own scheduler sets must reach the inner
optimizer; with gradient accumulation SPAG projects once per optimizer step, not per micro-batch;
``max_grad_norm`` clips the utility gradient the inner optimizer sees; the safety closure runs the
trainer's wrapped model (under ``bf16=True``, in autocast); SPAG's stats reach the logs.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
import torch  # noqa: E402
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from spag_optim import SafetyBatches, SPAGOptimizer, calibrate_tau  # noqa: E402
from spag_optim.integrations.trainer import TrainerSafetyClosure, attach_spag  # noqa: E402

from helpers.hf_tiny import (  # noqa: E402
    SAFE_PAIRS,
    SAFE_TEXTS,
    UTILITY_TEXTS,
    tokenized,
    tokenizer,
)
from helpers.tiny_lm import tiny_causal_lm  # noqa: E402
from helpers.trainer_probe import Probe  # noqa: E402

MAX_STEPS = 4
ACCUMULATION = 2
BATCH = 2
LR = 1e-2
MAX_GRAD_NORM = 0.01


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


# docs/integrations.md snippet (hand-built optimizer + attach_spag): the body of this function.
def train_with_spag(tmp_path, bf16=False):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    inner = torch.optim.AdamW(model.parameters(), lr=LR)
    probe = Probe(model, inner)
    safety = TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok, batch_size=2, loss_fn=probe.loss_fn)
    optimizer = SPAGOptimizer(inner, safety, tau=0.0)  # tau=0: every step projects
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=LR,
        lr_scheduler_type="linear",
        max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=bf16,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizers=(optimizer, None),  # None: the Trainer creates its scheduler on SPAG
    )
    callback = attach_spag(trainer)
    trainer.train()
    return trainer, optimizer, probe, callback


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_trainer_with_spag(tmp_path, bf16):
    trainer, optimizer, probe, callback = train_with_spag(tmp_path, bf16=bf16)
    assert trainer.state.global_step == MAX_STEPS

    # Scheduler: the Trainer's linear decay reached the inner optimizer at every step.
    assert probe.lrs == pytest.approx([LR * (MAX_STEPS - i) / MAX_STEPS for i in range(MAX_STEPS)])

    # Gradient accumulation: one projection per optimizer step, none per micro-batch.
    assert probe.safety_calls == optimizer.num_steps == MAX_STEPS
    assert probe.forwards == MAX_STEPS * ACCUMULATION + MAX_STEPS
    assert optimizer.num_projections == MAX_STEPS

    # max_grad_norm: the inner step sees the clipped utility gradient.
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(logged) == MAX_STEPS and min(logged) > MAX_GRAD_NORM
    assert max(probe.grad_norms) <= MAX_GRAD_NORM * (1 + 1e-3)

    # The closure runs the trainer's (autocast-patched under bf16) model.
    expected_dtype = torch.bfloat16 if bf16 else torch.float32
    assert probe.safety_dtypes and set(probe.safety_dtypes) == {expected_dtype}

    # SPAG's stats are in the Trainer's logs.
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == MAX_STEPS
    for entry, step in zip(train_logs, callback.history):
        assert entry["spag/projected"] == 1.0
        assert math.isclose(entry["spag/safety_loss"], step["safety_loss"], rel_tol=1e-6)
        assert entry["spag/alpha"] > 0
    assert train_logs[-1]["spag/projections"] == MAX_STEPS


def test_unbound_trainer_closure_says_what_to_do():
    tok = tokenizer()
    closure = TrainerSafetyClosure(tokenized(tok, SAFE_TEXTS))
    with pytest.raises(RuntimeError, match="attach_spag"):
        closure()


def make_trainer(tmp_path, model, tok, optimizer, max_steps=1):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        max_steps=max_steps,
        save_strategy="no",
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizers=(optimizer, None),
    )


def test_attach_spag_needs_a_spag_optimizer(tmp_path):
    from spag_optim.baselines import LisaOptimizer

    tok = tokenizer()
    model = tiny_causal_lm(tok)
    trainer = make_trainer(tmp_path, model, tok, torch.optim.AdamW(model.parameters()))
    with pytest.raises(ValueError, match="SPAGOptimizer"):
        attach_spag(trainer)
    # A baseline also has last_stats; it is not taken for SPAG (its logging would crash).
    lisa = LisaOptimizer(
        torch.optim.AdamW(model.parameters()), TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok)
    )
    with pytest.raises(ValueError, match="LisaOptimizer, not a SPAGOptimizer"):
        attach_spag(make_trainer(tmp_path, model, tok, lisa))


def test_attach_spag_calibrates_tau_without_moving_the_safe_batches(tmp_path):
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    safety = TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok, batch_size=2, seed=3)
    optimizer = SPAGOptimizer(torch.optim.AdamW(model.parameters(), lr=LR), safety)
    trainer = make_trainer(tmp_path, model, tok, optimizer, max_steps=2)
    with pytest.raises(ValueError, match="'calibrate'"):
        attach_spag(trainer, tau="calibrated")
    next(safety.batches)  # calibration starts where the batches are and leaves them there
    position = safety.batches.state_dict()
    attach_spag(trainer, tau="calibrate", calibration_batches=3, targets="given")
    assert safety.batches.state_dict() == position
    reference = SafetyBatches.from_pairs(SAFE_PAIRS, tok, batch_size=2, seed=3)
    next(reference)
    assert optimizer.tau == pytest.approx(calibrate_tau(model, reference, num_batches=3), rel=1e-9)
    assert optimizer.tau > 1.0  # a random model's refusal loss: the default 0.2 would not fit
    trainer.train()
    assert optimizer.num_steps == 2


def test_attach_spag_sets_a_given_tau(tmp_path):
    import numpy as np

    tok = tokenizer()
    model = tiny_causal_lm(tok)
    optimizer = SPAGOptimizer(
        torch.optim.AdamW(model.parameters()), TrainerSafetyClosure.from_pairs(SAFE_PAIRS, tok)
    )
    attach_spag(make_trainer(tmp_path, model, tok, optimizer), tau=np.float32(0.75))
    assert optimizer.tau == 0.75 and type(optimizer.tau) is float


def test_sft_trainer_with_spag(tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    tok = tokenizer()
    model = tiny_causal_lm(tok)
    inner = torch.optim.AdamW(model.parameters(), lr=LR)
    probe = Probe(model, inner)
    # docs/integrations.md snippet (TRL SFTTrainer): from here ...
    safety = TrainerSafetyClosure(tokenized(tok, SAFE_TEXTS), batch_size=2, loss_fn=probe.loss_fn)
    optimizer = SPAGOptimizer(inner, safety, tau=0.0)
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=LR,
        max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        max_length=32,
        seed=0,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=config,
        processing_class=tok,
        optimizers=(optimizer, None),
        train_dataset=datasets.Dataset.from_list([{"text": t} for t in UTILITY_TEXTS]),
    )
    attach_spag(trainer)
    trainer.train()
    # ... to here.
    assert trainer.state.global_step == MAX_STEPS
    assert probe.safety_calls == optimizer.num_steps == optimizer.num_projections == MAX_STEPS
    assert probe.forwards == MAX_STEPS * ACCUMULATION + MAX_STEPS
    assert probe.lrs == pytest.approx([LR * (MAX_STEPS - i) / MAX_STEPS for i in range(MAX_STEPS)])
    assert max(probe.grad_norms) <= MAX_GRAD_NORM * (1 + 1e-3)
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(train_logs) == MAX_STEPS and all(
        entry["spag/projected"] == 1.0 for entry in train_logs
    )


def test_closure_position_resumes_with_this_ranks_seed():
    """A checkpoint holds rank 0's closure state; loading it on rank 1 keeps rank 1's own seed."""
    from types import SimpleNamespace

    tok = tokenizer()
    closures = []
    for rank in (0, 1):
        closure = TrainerSafetyClosure(
            tokenized(tok, SAFE_TEXTS), batch_size=2, seed=5, collate_fn=lambda rows: rows
        )
        closure.bind(SimpleNamespace(args=SimpleNamespace(process_index=rank), data_collator=None))
        closures.append(closure)
    next(closures[0].batches)
    saved = closures[0].state_dict()
    closures[1].load_state_dict(saved)
    assert closures[1].batches.seed == 6
    assert closures[1].batches.position == closures[0].batches.position == 2
