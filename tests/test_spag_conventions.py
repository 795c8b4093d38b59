"""What SPAG users look for as plain attributes and behaviours (SPARD, ICML 2026, Algorithm 1):
``tau`` and ``last_stats`` are attributes, a skipped safety backward reports no gradient norm
(NaN), a plain optimizer's checkpoint loads with a notice, and at learning rate 0 the relative
trust region cannot project."""

from __future__ import annotations

import math

import pytest
import torch

from spag_optim import make_spag
from spag_optim.warnings import MissingCheckpointEntryWarning


def problem(lr=0.1, **kwargs):
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = make_spag(torch.optim.SGD([p], lr=lr), lambda: (p**2).sum(), **kwargs)
    return p, opt


def step(p, opt):
    opt.zero_grad()
    (p - 3.0).pow(2).sum().backward()  # the utility step moves p away from 0 (unsafe)
    opt.step()


def test_tau_is_an_attribute_the_next_step_uses():
    p, opt = problem(tau=100.0)
    step(p, opt)
    assert not bool(opt.last_stats["projected"])
    opt.tau = 0.0
    step(p, opt)
    assert bool(opt.last_stats["projected"])


def test_last_stats_holds_the_steps_values_as_0_dim_tensors():
    p, opt = problem(tau=0.0)
    assert opt.last_stats == {}
    step(p, opt)
    assert set(opt.last_stats) == {"safety_loss", "projected", "alpha", "safety_grad_norm"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in opt.last_stats.values())
    assert float(opt.last_stats["safety_grad_norm"]) > 0


@pytest.mark.parametrize("mode", ["paper", "authors_code"])
def test_the_grad_norm_of_a_step_without_safety_backward_is_nan(mode):
    p, opt = problem(tau=100.0, mode=mode)
    step(p, opt)
    assert not bool(opt.last_stats["projected"]) and float(opt.last_stats["alpha"]) == 0.0
    assert math.isnan(float(opt.last_stats["safety_grad_norm"]))
    assert math.isnan(opt.stats()["safety_grad_norm"])


def test_the_grad_norm_of_a_step_with_every_parameter_frozen_is_nan():
    p, opt = problem(tau=0.0)
    p.requires_grad_(False)
    with pytest.warns(RuntimeWarning, match="all frozen"):
        opt.step()
    assert math.isnan(float(opt.last_stats["safety_grad_norm"]))


def test_a_plain_optimizers_checkpoint_loads_with_a_notice():
    plain_p = torch.tensor([1.0, -2.0], requires_grad=True)
    plain = torch.optim.SGD([plain_p], lr=0.1, momentum=0.9)
    _, spag = problem(tau=0.0)
    plain_p.sum().backward()
    plain.step()
    with pytest.warns(MissingCheckpointEntryWarning, match="has no 'spag' entry"):
        spag.load_state_dict(plain.state_dict())
    assert spag.inner.state_dict() == plain.state_dict()
    assert spag.num_steps == 0 and spag.tau == 0.0  # SPAG's own state starts fresh


@pytest.mark.parametrize("trust_region", ["relative", "lr"])
def test_at_learning_rate_0_the_trust_region_cannot_project(trust_region):
    """A warmup schedule that starts at lr 0: the utility step is 0, so the relative trust
    region (at most rho times that step) and the "lr" one both cap alpha at 0."""
    p, opt = problem(lr=0.0, tau=0.0, trust_region=trust_region)
    before = p.detach().clone()
    step(p, opt)
    assert float(opt.last_stats["safety_loss"]) > 0  # unsafe: without a cap it would project
    assert not bool(opt.last_stats["projected"]) and float(opt.last_stats["alpha"]) == 0.0
    assert torch.equal(p.detach(), before)
    opt.param_groups[0]["lr"] = 0.1  # the next warmup step has a length to bound alpha with
    step(p, opt)
    assert bool(opt.last_stats["projected"])
