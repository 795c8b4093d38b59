"""SPAGOptimizer against the literal float64 references in ``spag_reference.py``.

30 steps on a small float64 MLP whose utility task pulls against its safety task, so the safety
loss crosses tau: some steps project and some do not, and both branches are compared.
"""

import copy

import pytest
import torch

from spag_optim import AuthorsCodeSPAG, SPAGOptimizer

from helpers.spag_reference import reference_authors_code_step, reference_paper_step
from helpers.toy_regression import mse, toy_mlp

STEPS = 30


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = toy_mlp(generator=g)
    x_util = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y_util = x_util.sum(1, keepdim=True)
    x_safe = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y_safe = -x_safe.sum(1, keepdim=True)  # the opposite task: utility progress costs safety
    return model, (x_util, y_util), (x_safe, y_safe)


INNERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.01),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9),
}


def initial_safety_loss():
    model, _, safe = make_problem()
    return float(mse(model, safe).detach())


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("trust_region", [0.05, None, "relative", "lr"])
def test_paper_mode_matches_literal_reference(inner_name, trust_region):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    tau = initial_safety_loss() * 1.3
    opt = SPAGOptimizer(
        INNERS[inner_name](model.parameters()),
        lambda: mse(model, safe),
        tau=tau,
        trust_region=trust_region,
        rho=0.7,
        eps=0.0,
    )
    ref_params = list(ref_model.parameters())
    ref_inner = INNERS[inner_name](ref_params)
    projected = 0
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        ref_inner.zero_grad()
        mse(ref_model, util).backward()
        did, alpha = reference_paper_step(
            ref_params,
            ref_inner,
            lambda: mse(ref_model, safe),
            tau=tau,
            trust_region=trust_region,
            rho=0.7,
            lr=ref_inner.param_groups[0]["lr"],
        )
        projected += did
        assert bool(opt.last_stats["projected"]) == did
        assert float(opt.last_stats["alpha"]) == pytest.approx(alpha, rel=1e-9, abs=1e-15)
        for p, q in zip(model.parameters(), ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9)
    assert 0 < projected < STEPS, f"tau must split the steps, projected {projected}/{STEPS}"
    assert opt.num_projections == projected
    assert opt.num_steps == STEPS


@pytest.mark.parametrize("inner_name", sorted(INNERS))
def test_authors_code_mode_matches_literal_reference(inner_name):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    tau, tolerance = initial_safety_loss() * 1.2, initial_safety_loss() * 0.05
    opt = AuthorsCodeSPAG(
        INNERS[inner_name](model.parameters()),
        lambda: mse(model, safe),
        tau=tau,
        tolerance=tolerance,
        alpha_max=1.0,
        eps=0.0,
    )
    ref_params = list(ref_model.parameters())
    ref_inner = INNERS[inner_name](ref_params)
    projected = 0
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        ref_inner.zero_grad()
        mse(ref_model, util).backward()
        did = reference_authors_code_step(
            ref_params,
            ref_inner,
            lambda: mse(ref_model, safe),
            tau=tau,
            tolerance=tolerance,
            alpha_max=1.0,
        )
        projected += did
        assert bool(opt.last_stats["projected"]) == did
        for p, q in zip(model.parameters(), ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9)
    assert 0 < projected < STEPS, f"tau must split the steps, projected {projected}/{STEPS}"
    # The inner optimizer stepped once more per projection (the authors' code feeds it the
    # scaled safety gradient), so Adam's step count sees it.
    if inner_name == "adamw":
        first = next(iter(opt.state.values()))
        assert int(first["step"]) == STEPS + projected


def test_sync_free_path_matches_skip_if_safe_path():
    results = []
    for skip in (True, False):
        model, util, safe = make_problem()
        tau = initial_safety_loss() * 1.3
        opt = SPAGOptimizer(
            INNERS["adamw"](model.parameters()),
            lambda: mse(model, safe),
            tau=tau,
            skip_if_safe=skip,
        )
        for _ in range(STEPS):
            opt.zero_grad()
            mse(model, util).backward()
            opt.step()
        results.append(
            (torch.cat([p.detach().flatten() for p in model.parameters()]), opt.num_projections)
        )
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-12)
    assert results[0][1] == results[1][1] > 0
