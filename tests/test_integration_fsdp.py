"""SPAG with sharded parameters: FSDP2 (``fully_shard``) and tensor-parallel DTensors, on 2 CPU ranks.

||g||^2, the utility step's length (``trust_region="relative"``) and the loss must each be reduced
over the shard group exactly once: a sharded parameter's squares summed over its shards, a
replicated one counted once. Both runs are compared with one unsharded process; a norm that summed a
replicated parameter over the ranks, or took one shard only, would give another alpha.

FSDP2 runs on CPU with the gloo backend here (torch >= 2.6); no GPU run was available.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from helpers.gloo_workers import run_workers
from helpers.toy_regression import mse, regression_batches, toy_mlp, train_alphas

if not hasattr(pytest.importorskip("torch.distributed.fsdp"), "fully_shard"):
    pytest.skip(
        "FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6", allow_module_level=True
    )
from spag_optim import SPAGOptimizer

pytestmark = pytest.mark.distributed

WORLD = 2
STEPS = 12
ROWS = 8


def make_model() -> torch.nn.Module:
    # Output width 1 makes the last weight's Shard(0) split uneven: rank 1 holds an empty shard.
    return toy_mlp(hidden=6)


def make_data(rank: int | None):
    """Per-rank halves (data parallel), or everything when rank is None."""
    return regression_batches(WORLD, ROWS, rank)


def tau() -> float:
    _, safe = make_data(None)
    return float(mse(make_model(), safe).detach()) * 1.2


# docs/integrations.md snippet (FSDP2): fully_shard in sharded_worker, then this loop.
def run(model, util, safe, trust_region):
    opt = SPAGOptimizer(
        torch.optim.AdamW(model.parameters(), lr=0.05),
        lambda: mse(model, safe),
        tau=tau(),
        trust_region=trust_region,
        eps=0.0,
    )
    return opt, train_alphas(opt, model, util, STEPS)


def full_params(model):
    return [
        p.full_tensor().detach() if hasattr(p, "full_tensor") else p.detach().clone()
        for p in model.parameters()
    ]


TRUST_REGIONS = {"relative": "relative", "none": None}


def sharded_worker(rank: int, world_size: int, out) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (world_size,))
    results = {}
    for name, trust_region in TRUST_REGIONS.items():
        # FSDP2: every parameter Shard(0); each rank trains on its own half of the data.
        model = make_model()
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        util, safe = make_data(rank)
        opt, alphas = run(model, util, safe, trust_region)
        results[f"fsdp_{name}"] = {
            "alphas": alphas,
            "params": full_params(model),
            "mode": opt._safety_gradient.reducer.mode,
            "projections": opt.num_projections,
        }
        # Tensor parallel: Shard(0), Shard(1) and one Replicate parameter (the row-wise bias);
        # every rank sees all the data, as tensor parallelism requires.
        model = make_model()
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        placements = [str(p.placements) for p in model.parameters()]
        util, safe = make_data(None)
        opt, alphas = run(model, util, safe, trust_region)
        results[f"tp_{name}"] = {
            "alphas": alphas,
            "params": full_params(model),
            "mode": opt._safety_gradient.reducer.mode,
            "projections": opt.num_projections,
            "placements": placements,
        }
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = run_workers(sharded_worker, WORLD, tmp_path_factory.mktemp("fsdp"))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def unsharded_results():
    results = {}
    for name, trust_region in TRUST_REGIONS.items():
        model = make_model()
        util, safe = make_data(None)
        _, alphas = run(model, util, safe, trust_region)
        results[name] = {"alphas": alphas, "params": full_params(model)}
    return results


@pytest.mark.parametrize("layout", ["fsdp", "tp"])
@pytest.mark.parametrize("trust_region", sorted(TRUST_REGIONS))
def test_sharded_and_unsharded_runs_give_the_same_alpha(
    sharded_results, unsharded_results, layout, trust_region
):
    expected = unsharded_results[trust_region]
    for rank_results in sharded_results:
        got = rank_results[f"{layout}_{trust_region}"]
        assert got["mode"] == "sharded"
        assert 0 < got["projections"] < STEPS, "tau must split the steps"
        assert got["alphas"] == pytest.approx(expected["alphas"], rel=1e-9, abs=1e-15)
        for p, q in zip(got["params"], expected["params"]):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


def test_tensor_parallel_layout_has_a_replicated_parameter(sharded_results):
    """The TP case really mixes Shard and Replicate (else it would not test double counting)."""
    placements = sharded_results[0]["tp_none"]["placements"]
    assert any("Replicate" in p for p in placements)
    assert any("Shard(dim=1)" in p for p in placements)
