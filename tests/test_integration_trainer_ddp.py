"""Hugging Face Trainer + SPAG on two gloo ranks (the Trainer's own DDP, as under ``torchrun``),
through ``attach_spag`` and through ``SPAGTrainer``.

The closure made by ``TrainerSafetyClosure`` runs ``trainer.model_wrapped``, the DDP model, so
``distributed="auto"`` must resolve to ``"ddp"``; each rank draws its own safe batches, and the
replicas must still end bitwise identical, with one shared alpha per step.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
import torch  # noqa: E402

from helpers.gloo_workers import run_workers  # noqa: E402

pytestmark = pytest.mark.distributed

WORLD = 2
MAX_STEPS = 3


def trainer_worker(rank: int, world_size: int, out, how: str) -> None:
    # What torchrun would export; Accelerate reuses the process group already initialised.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from spag_optim import SPAGOptimizer
    from spag_optim.integrations.trainer import (
        SPAGTrainer,
        TrainerSafetyClosure,
        attach_spag,
        find_spag_optimizer,
    )

    from helpers.hf_tiny import SAFE_TEXTS, UTILITY_TEXTS, tokenized, tokenizer
    from helpers.tiny_lm import tiny_causal_lm

    tok = tokenizer()
    model = tiny_causal_lm(tok)
    local_losses = []

    def recording_loss(model, batch):
        loss = model(**batch).loss
        local_losses.append(float(loss.detach()))
        return loss

    safety = TrainerSafetyClosure(tokenized(tok, SAFE_TEXTS), batch_size=2, loss_fn=recording_loss)
    args = TrainingArguments(
        output_dir=str(out / f"run{rank}"),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    data = dict(
        model=model,
        args=args,
        train_dataset=tokenized(tok, UTILITY_TEXTS),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    if how == "attach_spag":
        optimizer = SPAGOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), safety, tau=0.0)
        trainer = Trainer(**data, optimizers=(optimizer, None))
        callback = attach_spag(trainer)
    else:
        trainer = SPAGTrainer(**data, safety=safety, spag={"tau": 0.0})
        callback = trainer.spag_callback
    trainer.train()
    optimizer = find_spag_optimizer(trainer.optimizer)
    train_losses = list(local_losses)  # the training steps' (calibration records one more)
    calibrated = safety.calibrate_tau(1)  # each rank measures its own batch; tau is their mean
    torch.save(
        {
            "calibrated": calibrated,
            "params": [p.detach().clone() for p in model.parameters()],
            "history": callback.history,
            "local_losses": train_losses,
            "resolved": optimizer._safety_gradient.reducer.mode,
            "wrapped": type(trainer.model_wrapped).__name__,
            "projections": optimizer.num_projections,
        },
        out / f"rank{rank}.pt",
    )


@pytest.mark.parametrize("how", ["attach_spag", "SPAGTrainer"])
def test_trainer_ddp_replicas_stay_identical(tmp_path, how):
    out = run_workers(trainer_worker, WORLD, tmp_path, how)
    rank0, rank1 = (torch.load(out / f"rank{r}.pt") for r in range(WORLD))
    assert rank0["wrapped"] == "DistributedDataParallel"
    assert rank0["resolved"] == rank1["resolved"] == "ddp"
    assert rank0["projections"] == rank1["projections"] == MAX_STEPS
    # The ranks drew different safe batches, yet used the same mean loss, alpha and norm.
    assert rank0["local_losses"] != rank1["local_losses"]
    assert rank0["history"] == rank1["history"]
    for step, (a, b) in enumerate(zip(rank0["local_losses"], rank1["local_losses"])):
        assert rank0["history"][step]["safety_loss"] == pytest.approx((a + b) / 2, rel=1e-6)
    for p0, p1 in zip(rank0["params"], rank1["params"]):
        assert torch.equal(p0, p1)
    # attach_spag(trainer, tau="calibrate"): one tau for all ranks, or their decisions would differ.
    assert rank0["calibrated"] == rank1["calibrated"] > 0
