"""SPAG under DistributedDataParallel: two gloo ranks on CPU against one process on all the data.

Each rank holds half of every batch. The safety losses of the two halves are made to differ, so
that on some steps one rank's own loss is above tau and the other's below: deciding
``skip_if_safe`` on a rank's own loss would then run the DDP safety backward on one rank only and
hang (the collective timeout turns that into a failure). Every rank must instead use the mean
loss and the mean gradient, i.e. exactly what one process computes on the concatenated batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure, make_spag

from helpers.gloo_workers import run_workers
from helpers.toy_regression import mse, regression_batches, toy_mlp, train_alphas

pytestmark = pytest.mark.distributed

WORLD = 2
STEPS = 25
ROWS = 8  # per rank


def make_data(rank: int | None):
    """(utility, safety) batches of ``rank``, or of all ranks concatenated when rank is None."""
    # The second half (rank 1) is a harder version of the safety task than the first.
    scale = torch.cat([torch.full((ROWS, 1), 0.6), torch.full((ROWS, 1), 1.6)]).double()
    return regression_batches(WORLD, ROWS, rank, safe_scale=scale)


def make_inner(params):
    return torch.optim.AdamW(params, lr=0.05, weight_decay=0.01)


def tau() -> float:
    _, safe = make_data(None)
    return float(mse(toy_mlp(), safe).detach()) * 1.25


SCENARIOS = {
    # name: (closure runs the DDP-wrapped model?, distributed=, skip_if_safe, mode)
    "ddp_model_auto": (True, "auto", True, "paper"),
    "bare_module_auto": (False, "auto", True, "paper"),
    "ddp_model_explicit_no_sync_read": (True, "ddp", False, "paper"),
    "bare_module_explicit": (False, "allreduce", True, "paper"),
    "ddp_model_authors_code": (True, "auto", True, "authors_code"),
    "bare_module_authors_code": (False, "auto", True, "authors_code"),
}


def ddp_worker(rank: int, world_size: int, out, name: str) -> None:
    through_ddp, distributed, skip, mode = SCENARIOS[name]
    model = toy_mlp()
    ddp_model = DDP(model)
    util, safe = make_data(rank)
    local_losses = []

    def loss_fn(module, batch):
        loss = mse(module, batch)
        local_losses.append(float(loss.detach()))
        return loss

    # docs/integrations.md snippet (DDP) is these lines with one scenario's arguments.
    # This rank's whole safe half as one (reshuffled) batch per step.
    batches = SafetyBatches(list(zip(*safe)), batch_size=ROWS, seed=rank)
    closure = make_safety_closure(ddp_model if through_ddp else model, batches, loss_fn)
    opt = make_spag(
        make_inner(ddp_model.parameters()),
        closure,
        tau=tau(),
        trust_region=None,
        eps=0.0,
        distributed=distributed,
        skip_if_safe=skip,
        mode=mode,
    )
    alphas, global_losses = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        mse(ddp_model, util).backward()
        opt.step()
        alphas.append(float(opt.last_stats["alpha"]))
        global_losses.append(float(opt.last_stats["safety_loss"]))
    torch.save(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "alphas": alphas,
            "global_losses": global_losses,
            "local_losses": local_losses,
            "resolved": opt._safety_gradient.reducer.mode,
            "projections": opt.num_projections,
        },
        out / f"{name}_rank{rank}.pt",
    )
    dist.barrier()


def all_scenarios_worker(rank: int, world_size: int, out) -> None:
    for name in SCENARIOS:
        ddp_worker(rank, world_size, out, name)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = run_workers(all_scenarios_worker, WORLD, tmp_path_factory.mktemp("ddp"))
    return {
        name: [torch.load(out / f"{name}_rank{r}.pt") for r in range(WORLD)] for name in SCENARIOS
    }


@pytest.fixture(scope="module")
def single_process():
    """The same runs in one process on the concatenated batches, per SPAG mode."""
    results = {}
    for mode in ("paper", "authors_code"):
        model = toy_mlp()
        util, safe = make_data(None)
        opt = make_spag(
            make_inner(model.parameters()),
            lambda: mse(model, safe),
            tau=tau(),
            trust_region=None,
            eps=0.0,
            mode=mode,
        )
        alphas = train_alphas(opt, model, util, STEPS)
        results[mode] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "alphas": alphas,
        }
    return results


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_replicas_stay_bitwise_identical(ddp_results, name):
    rank0, rank1 = ddp_results[name]
    for p0, p1 in zip(rank0["params"], rank1["params"]):
        assert torch.equal(p0, p1)
    assert rank0["alphas"] == rank1["alphas"]
    assert 0 < rank0["projections"] < STEPS, "tau must split the steps"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_alpha_equals_single_process_alpha_on_concatenated_data(ddp_results, single_process, name):
    rank0 = ddp_results[name][0]
    expected = single_process[SCENARIOS[name][3]]
    assert rank0["alphas"] == pytest.approx(expected["alphas"], rel=1e-9, abs=1e-15)
    for p, q in zip(rank0["params"], expected["params"]):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


def test_auto_detects_who_synchronises_the_gradient(ddp_results):
    assert ddp_results["ddp_model_auto"][0]["resolved"] == "ddp"
    assert ddp_results["bare_module_auto"][0]["resolved"] == "allreduce"


def test_skip_decision_uses_the_reduced_loss(ddp_results):
    """Steps exist where the ranks' own losses fall on opposite sides of tau; both ranks still
    took the same decision, from the mean loss."""
    rank0, rank1 = ddp_results["ddp_model_auto"]
    threshold = tau()
    straddling = [
        i
        for i, (a, b) in enumerate(zip(rank0["local_losses"], rank1["local_losses"]))
        if (a > threshold) != (b > threshold)
    ]
    assert straddling, "the data must make the ranks' own losses disagree on some step"
    for i in straddling:
        mean = (rank0["local_losses"][i] + rank1["local_losses"][i]) / 2
        assert rank0["global_losses"][i] == pytest.approx(mean, rel=1e-12)
        assert (rank0["alphas"][i] > 0) == (mean > threshold) == (rank1["alphas"][i] > 0)


def test_distributed_mode_without_process_group_fails_clearly():
    model = toy_mlp()
    opt = SPAGOptimizer(
        make_inner(model.parameters()), lambda: mse(model, make_data(None)[1]), distributed="ddp"
    )
    mse(model, make_data(None)[0]).backward()
    with pytest.raises(RuntimeError, match="init_process_group"):
        opt.step()
    with pytest.raises(ValueError, match="distributed="):
        SPAGOptimizer(
            make_inner(model.parameters()),
            lambda: mse(model, make_data(None)[1]),
            distributed="fsdp",
        )
