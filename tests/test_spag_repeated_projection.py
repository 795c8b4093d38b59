"""SPAGOptimizer(projection_iterations=K): the projection repeated on the same safe batch until the
safety loss is at most tau (at most K times per step), against the literal float64 reference in
``spag_reference.py`` on the toy regression whose utility task pulls against its safety task."""

import copy

import pytest
import torch

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure, make_spag

from helpers.pair_model import PairLoss, safe_dataset, train
from helpers.spag_reference import reference_repeated_step
from helpers.toy_regression import mse, toy_mlp

STEPS = 30


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = toy_mlp(generator=g)
    x_util = torch.randn(16, 5, generator=g, dtype=torch.float64)
    x_safe = torch.randn(12, 5, generator=g, dtype=torch.float64)
    return model, (x_util, x_util.sum(1, keepdim=True)), (x_safe, -x_safe.sum(1, keepdim=True))


def tau_of(safe_loss_at_start):
    return safe_loss_at_start * 1.3


INNERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.01),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9),
}


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("trust_region", [0.05, None, "relative"])
def test_repeated_projection_matches_literal_reference(inner_name, trust_region):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    tau = tau_of(float(mse(model, safe).detach()))
    opt = SPAGOptimizer(
        INNERS[inner_name](model.parameters()),
        lambda: mse(model, safe),
        tau=tau,
        trust_region=trust_region,
        rho=0.7,
        eps=0.0,
        projection_iterations=4,
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
        alpha = reference_repeated_step(
            ref_params,
            ref_inner,
            lambda: mse(ref_model, safe),
            tau=tau,
            trust_region=trust_region,
            rho=0.7,
            iterations=4,
        )
        projected += alpha > 0
        assert float(opt.last_stats["alpha"]) == pytest.approx(alpha, rel=1e-9, abs=1e-15)
        for p, q in zip(model.parameters(), ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9)
    assert 0 < projected < STEPS, f"tau must split the steps, projected {projected}/{STEPS}"
    assert opt.num_projections == projected


def safety_losses_after_steps(iterations, trust_region):
    model, util, safe = make_problem()
    tau = tau_of(float(mse(model, safe).detach()))
    opt = SPAGOptimizer(
        INNERS["adamw"](model.parameters()),
        lambda: mse(model, safe),
        tau=tau,
        trust_region=trust_region,
        projection_iterations=iterations,
    )
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        losses.append(float(mse(model, safe).detach()))
    return tau, losses


@pytest.mark.parametrize("trust_region", [None, "relative"])
def test_repeats_hold_the_constraint_that_one_linearised_projection_loses(trust_region):
    tau, once = safety_losses_after_steps(1, trust_region)
    _, repeated = safety_losses_after_steps(20, trust_region)
    assert max(once) > tau * 1.01  # the paper's single projection undershoots on this problem
    # Each repeat projects from where the last one landed until the loss is <= tau; 20 suffice
    # here, so after every step the constraint holds (up to the float64 rounding of the loss).
    assert max(repeated) <= tau * (1 + 1e-12)


def build_pair(iterations, seed=0):
    model = PairLoss(seed)
    closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    inner = torch.optim.AdamW(model.parameters(), lr=0.05)
    return model, SPAGOptimizer(inner, closure, tau=0.5, projection_iterations=iterations)


def test_repeats_reuse_the_steps_safe_batch_and_draw_no_other():
    # Every step repeats (the trust region caps the first projection on this model), yet the safe
    # batches advance exactly as under the paper's rule: one batch per step.
    model, opt = build_pair(3)
    model_once, opt_once = build_pair(1)
    train(model, opt, 6)
    train(model_once, opt_once, 6)
    assert opt.safety_closure.state_dict() == opt_once.safety_closure.state_dict()
    assert opt.num_projections == opt_once.num_projections == 6


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (1.5, ValueError), (True, ValueError), ("2", ValueError)]
)
def test_bad_projection_iterations_fail_at_construction(value, error):
    model = PairLoss()
    with pytest.raises(error, match="projection_iterations must be an int >= 1"):
        SPAGOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda: model.net(torch.ones(4)).sum(),
            projection_iterations=value,
        )


def test_projection_iterations_is_refused_in_authors_code_mode():
    model = PairLoss()
    with pytest.raises(ValueError, match="mode='paper'"):
        make_spag(
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda: model.net(torch.ones(4)).sum(),
            mode="authors_code",
            projection_iterations=2,
        )


def test_repeats_stop_at_tau_plus_tolerance_and_on_a_non_finite_loss():
    from spag_optim.functional import repeated_projection_stops as stops

    assert stops(0.01, tau=0.01, tolerance=0.0) and not stops(0.0101, tau=0.01, tolerance=0.0)
    assert stops(0.015, tau=0.01, tolerance=0.01) and not stops(0.03, tau=0.01, tolerance=0.01)
    assert stops(float("nan"), tau=0.01, tolerance=0.0) and stops(
        float("inf"), tau=0.01, tolerance=0.0
    )


def test_the_demo_method_spard_repeated_builds_spag_with_repeated_projections():
    from _demo.config import SMOKE
    from _demo.methods import METHODS, REPEATED_PROJECTIONS

    param = torch.nn.Parameter(torch.ones(2))
    method = METHODS["spard_repeated"]
    opt = method.wrapper(
        torch.optim.AdamW([param]), lambda: (param**2).sum(), SMOKE, **method.options
    )
    assert method.selection == METHODS["spard"].selection
    assert isinstance(opt, SPAGOptimizer) and opt.tau == SMOKE.tau
    assert opt.projection_iterations == REPEATED_PROJECTIONS > 1
