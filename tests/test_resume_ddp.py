"""A two-rank run resumed from rank 0's checkpoint equals the uninterrupted two-rank run.

The DDP pattern in docs/integrations.md gives each rank its own safe batches (``SafetyBatches(...,
seed=rank)``) and, as Hugging Face's Trainer does, saves one optimizer checkpoint (rank 0's) that
every rank loads. The checkpoint restores the batches' *position*; each rank keeps the seed it
constructed its batches with. Were rank 0's seed loaded everywhere, both ranks would draw the same
safe batches after the resume and the averaged safety loss and gradient, hence the parameters, would
differ.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure

from helpers.gloo_workers import run_workers
from helpers.toy_regression import mse, toy_mlp

pytestmark = pytest.mark.distributed

WORLD = 2
STEPS = 8
RESUME_AT = 3  # the checkpoint is taken after this many steps


def safe_rows():
    """The same 12 safe rows on every rank; each rank shuffles them with its own seed."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    return list(
        zip(x, -x.sum(1, keepdim=True) * torch.linspace(0.5, 2.0, 12, dtype=torch.float64)[:, None])
    )


def utility_batch(rank: int, step: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    return x, x.sum(1, keepdim=True)


def setup(rank: int):
    model = toy_mlp()
    ddp_model = DDP(model)
    batches = SafetyBatches(safe_rows(), batch_size=3, seed=rank)
    closure = make_safety_closure(ddp_model, batches, mse)
    opt = SPAGOptimizer(torch.optim.AdamW(ddp_model.parameters(), lr=0.05), closure, tau=0.0)
    return model, ddp_model, opt, batches


def train(ddp_model, opt, rank: int, start: int, stop: int) -> None:
    for step in range(start, stop):
        opt.zero_grad()
        mse(ddp_model, utility_batch(rank, step)).backward()
        opt.step()


def resume_worker(rank: int, world_size: int, out) -> None:
    model, ddp_model, opt, _ = setup(rank)
    train(ddp_model, opt, rank, 0, STEPS)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, ddp_model, opt, _ = setup(rank)
    train(ddp_model, opt, rank, 0, RESUME_AT)
    checkpoint = out / "checkpoint.pt"
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, checkpoint)
    dist.barrier()

    model, ddp_model, opt, batches = setup(rank)  # a fresh process would build exactly this
    state = torch.load(checkpoint, weights_only=True)  # rank 0's, on every rank
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    seed_after_load = batches.seed
    train(ddp_model, opt, rank, RESUME_AT, STEPS)
    torch.save(
        {
            "uninterrupted": uninterrupted,
            "resumed": [p.detach().clone() for p in model.parameters()],
            "seed_after_load": seed_after_load,
            "projections": opt.num_projections,
        },
        out / f"rank{rank}.pt",
    )
    dist.barrier()


def test_resuming_from_rank0s_checkpoint_equals_the_uninterrupted_run(tmp_path):
    out = run_workers(resume_worker, WORLD, tmp_path)
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert result["seed_after_load"] == rank  # the constructed seed is kept
        assert result["projections"] == STEPS  # tau = 0: the safe batches matter on every step
        for resumed, uninterrupted in zip(result["resumed"], result["uninterrupted"]):
            assert torch.equal(resumed, uninterrupted)
    for p0, p1 in zip(results[0]["resumed"], results[1]["resumed"]):
        assert torch.equal(p0, p1)
