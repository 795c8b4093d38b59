"""The optimizer baselines' own plumbing: Lisa's saved anchor, non-finite safety losses, the
registry. The contract every wrapper shares (hooks, schedulers, resume, add_param_group, bad input)
is tested in ``test_wrapper_contract.py``."""

from __future__ import annotations

import pytest
import torch

from spag_optim import SafetyBatches, make_safety_closure
from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer, SafeGradOptimizer

from helpers.defenses import build_defense
from helpers.pair_model import PairLoss, flat_params, safe_dataset, train


def build(name):
    model = PairLoss()
    closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    return model, build_defense(name, torch.optim.AdamW(model.parameters(), lr=0.05), closure)


def test_lisa_resume_needs_its_anchor():
    """Guard for the bit-identical resume in test_wrapper_contract.py: without the saved anchor,
    Lisa's resumed run would differ."""
    model, opt = build("lisa")
    train(model, opt, 4)  # mid fine-tuning state, anchor != initial parameters
    state = opt.state_dict()
    assert len(state["lisa"]["anchor"]) == len(list(model.parameters()))
    assert not torch.equal(
        torch.cat([a.flatten() for a in state["lisa"]["anchor"]]), flat_params(PairLoss(0))
    )


@pytest.mark.parametrize("name", ["penalty", "safegrad"])
def test_nonfinite_safety_loss_falls_back_to_the_plain_step(name):
    model = PairLoss()
    twin = PairLoss()
    opt = build_defense(
        name,
        torch.optim.SGD(model.net.parameters(), lr=0.1),
        lambda: model.net(torch.ones(2, 4)).sum() * float("nan"),
    )
    plain = torch.optim.SGD(twin.net.parameters(), lr=0.1)
    model.net(torch.ones(2, 4)).sum().backward()
    twin.net(torch.ones(2, 4)).sum().backward()
    with pytest.warns(RuntimeWarning, match="safety loss is nan"):
        opt.step()
    plain.step()
    assert torch.equal(flat_params(model), flat_params(twin))
    assert opt.num_nonfinite == 1


def test_lisa_nonfinite_alignment_loss_skips_the_step():
    model = PairLoss()
    before = flat_params(model)
    opt = LisaOptimizer(
        torch.optim.SGD(model.net.parameters(), lr=0.1),
        lambda: model.net(torch.ones(2, 4)).sum() + float("inf"),
    )
    with pytest.warns(RuntimeWarning, match="safety loss is inf"):
        opt.step()
    assert torch.equal(flat_params(model), before) and opt.num_nonfinite == 1


def test_registry_names_every_optimizer_baseline():
    from spag_optim.baselines import OPTIMIZER_BASELINES

    assert OPTIMIZER_BASELINES == {
        "penalty": PenaltyOptimizer,
        "lisa": LisaOptimizer,
        "safegrad": SafeGradOptimizer,
    }
