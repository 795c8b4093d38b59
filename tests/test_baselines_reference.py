"""Penalty, SafeGrad and Lisa against the literal float64 references in baseline_reference.py.

20 steps on a small float64 MLP whose utility task partly pulls against its safety task, so each
rule's branches (hinge on/off, conflict/no conflict, both Lisa states) all occur.
"""

from __future__ import annotations

import copy

import pytest
import torch

from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer, SafeGradOptimizer

from helpers.baseline_reference import (
    ReferenceLisa,
    reference_penalty_step,
    reference_safegrad_step,
)
from helpers.toy_regression import mse, toy_mlp

STEPS = 20


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = toy_mlp(generator=g)
    x_util = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y_util = x_util[:, :3].sum(1, keepdim=True)
    x_safe = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y_safe = x_safe[:, 2:].sum(1, keepdim=True) - x_safe[:, 0:1]  # partly opposed tasks
    return model, (x_util, y_util), (x_safe, y_safe)


INNERS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.01),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
}


def max_abs_diff(a, b):
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("inner_name", sorted(INNERS))
def test_penalty_matches_literal_reference(inner_name):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    tau = float(mse(model, safe).detach()) * 0.9
    opt = PenaltyOptimizer(
        INNERS[inner_name](model.parameters()), lambda: mse(model, safe), lam=0.7, tau=tau
    )
    ref_params = list(ref_model.parameters())
    ref_inner = INNERS[inner_name](ref_params)
    active = []
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        active.append(
            reference_penalty_step(
                ref_params,
                ref_inner,
                lambda: mse(ref_model, util),
                lambda: mse(ref_model, safe),
                lam=0.7,
                tau=tau,
            )
        )
        assert opt.last_stats["penalty_active"] == active[-1]
    assert 0 < sum(active) < STEPS, "both hinge branches must be exercised"
    assert opt.num_active == sum(active)
    assert max_abs_diff(model, ref_model) < 1e-9


@pytest.mark.parametrize("inner_name", sorted(INNERS))
def test_safegrad_matches_literal_reference(inner_name):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    opt = SafeGradOptimizer(INNERS[inner_name](model.parameters()), lambda: mse(model, safe))
    ref_params = list(ref_model.parameters())
    ref_inner = INNERS[inner_name](ref_params)
    conflicts = []
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        conflicts.append(
            reference_safegrad_step(
                ref_params, ref_inner, lambda: mse(ref_model, util), lambda: mse(ref_model, safe)
            )
        )
        assert opt.last_stats["conflict"] == conflicts[-1]
    assert 0 < sum(conflicts) < STEPS, "both conflict branches must be exercised"
    assert opt.num_conflicts == sum(conflicts)
    assert max_abs_diff(model, ref_model) < 1e-9


@pytest.mark.parametrize("inner_name", sorted(INNERS))
@pytest.mark.parametrize("rho, proximal_after", [(0.5, 0), (2.0, 5), (0.0, 0)])
def test_lisa_matches_literal_reference(inner_name, rho, proximal_after):
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    opt = LisaOptimizer(
        INNERS[inner_name](model.parameters()),
        lambda: mse(model, safe),
        alignment_steps=3,
        finetune_steps=4,
        rho=rho,
        proximal_after=proximal_after,
    )
    ref_params = list(ref_model.parameters())
    ref = ReferenceLisa(
        ref_params,
        INNERS[inner_name](ref_params),
        alignment_step=3,
        finetune_step=4,
        rho=rho,
        proximal_after=proximal_after,
    )
    states = []
    for _ in range(STEPS):
        expected_alignment = opt.is_alignment_step
        opt.zero_grad()
        if not expected_alignment:  # the utility gradient is only needed in fine-tuning steps
            mse(model, util).backward()
        opt.step()
        states.append(ref.step(lambda: mse(ref_model, util), lambda: mse(ref_model, safe)))
        assert opt.last_stats["state"] == states[-1]
        assert expected_alignment == (states[-1] == "alignment")
    assert states[:8] == ["alignment"] * 3 + ["finetune"] * 4 + ["alignment"]
    assert max_abs_diff(model, ref_model) < 1e-9


def test_lisa_alignment_steps_ignore_the_utility_gradient():
    model, util, safe = make_problem()
    twin = copy.deepcopy(model)
    a = LisaOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: mse(model, safe),
        alignment_steps=2,
        finetune_steps=1,
    )
    b = LisaOptimizer(
        torch.optim.SGD(twin.parameters(), lr=0.1),
        lambda: mse(twin, safe),
        alignment_steps=2,
        finetune_steps=1,
    )
    for _ in range(2):
        mse(model, util).backward()  # garbage the alignment step must discard
        a.step()
        a.zero_grad()
        b.step()
    assert max_abs_diff(model, twin) == 0.0
