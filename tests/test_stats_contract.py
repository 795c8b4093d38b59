"""One stats contract for SPAG and every optimizer baseline: ``stats()`` returns Python floats with
the shared ``num_steps``/``num_nonfinite``/``num_interventions`` and each method's own names."""

import pytest
import torch

from spag_optim import make_spag
from spag_optim.baselines import LisaOptimizer

from helpers.defenses import DEFENSES, build_defense

# name -> (the options it changes from the registry's: tau 0, the library's lam and rho; the
# method's own counter that num_interventions is)
OWN = {
    "spag": ({"tau": 0.0}, "num_projections"),
    "spag_authors_code": ({"tau": 0.0}, "num_projections"),
    "spag_repeated": ({"tau": 0.0}, "num_projections"),
    "penalty": ({"lam": 1.0, "tau": 0.0}, "num_active"),
    "safegrad": ({}, "num_conflicts"),
    "lisa": ({"rho": 1.0}, None),
}
SHARED = {"num_steps", "num_nonfinite", "num_interventions"}


def build(name, seed=0):
    options, _ = OWN[name]
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3)
    # the utility task pulls against the safety task, so SafeGrad sees conflicts
    opt = build_defense(
        name,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: ((model(x) + 1) ** 2).mean(),
        **options,
    )
    return model, x, opt


def train(model, x, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - 1) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", list(DEFENSES))
def test_stats_are_floats_with_the_shared_and_the_own_counters(name):
    model, x, opt = build(name)
    train(model, x, opt, 4)
    stats = opt.stats()
    assert all(type(v) is float for v in stats.values()), stats
    assert SHARED | set(opt.COUNTERS) <= set(stats) and "safety_loss" in stats
    assert stats["num_steps"] == 4.0 and stats["num_nonfinite"] == 0.0
    own = OWN[name][1]
    if own is None:  # Lisa: its alignment steps follow a schedule, not the safety loss
        assert stats["num_interventions"] == 0.0 and stats["num_alignment_steps"] == 2.0
        assert stats["alignment"] == 0.0  # step 4 of a 2 + 3 cycle fine-tunes
    else:
        assert stats["num_interventions"] == stats[own] == float(getattr(opt, own)) > 0


@pytest.mark.parametrize("name", list(DEFENSES))
def test_num_interventions_continues_after_a_resume(name):
    model, x, opt = build(name)
    train(model, x, opt, 3)
    model2, x2, resumed = build(name, seed=1)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.stats()["num_interventions"] == opt.stats()["num_interventions"]
    train(model, x, opt, 5)  # Lisa's second alignment state starts at step 5
    train(model2, x, resumed, 5)
    assert resumed.num_interventions == opt.num_interventions
    assert resumed.stats()["num_steps"] == 8.0
    if isinstance(opt, LisaOptimizer):
        assert resumed.num_alignment_steps == opt.num_alignment_steps == 4


@pytest.mark.parametrize(
    "options",
    [
        {"tau": 0.0},
        {"tau": 100.0},
        {"tau": 0.0, "skip_if_safe": False},
        {"tau": 0.0, "mode": "authors_code"},
    ],
)
def test_spag_last_stats_are_0_dim_tensors_on_every_path(options):
    opt_model = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3)
    opt = make_spag(
        torch.optim.SGD(opt_model.parameters(), lr=0.1),
        lambda: ((opt_model(x) + 1) ** 2).mean(),
        **options,
    )
    train(opt_model, x, opt, 2)
    assert set(opt.last_stats) == {"safety_loss", "projected", "alpha", "safety_grad_norm"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in opt.last_stats.values())
    projected = options["tau"] == 0.0
    assert bool(opt.last_stats["projected"]) == projected
    assert opt.stats()["projected"] == float(projected) and (opt.stats()["alpha"] > 0) == projected
