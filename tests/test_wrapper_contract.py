"""Every safety wrapper (SPAG in both modes and each optimizer baseline) behaves like a torch
optimizer: step hooks, LR schedulers, resume through ``state_dict``, ``add_param_group``, shared
``param_groups``/``state``/``defaults``, and clear errors on bad input. Method-specific behaviour is
tested in each method's own file."""

from __future__ import annotations

import inspect
import io
import warnings

import pytest
import torch

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure
from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer
from spag_optim.warnings import MissingCheckpointEntryWarning

from helpers import pair_model
from helpers.defenses import DEFENSES, SPAG_NAMES, build_defense
from helpers.pair_model import PairLoss, flat_params, safe_dataset, train, utility_batch

NAMES = sorted(DEFENSES)


def build(name, seed=0, make_inner=lambda params: torch.optim.AdamW(params, lr=0.05), **overrides):
    model = PairLoss(seed)
    closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    return model, build_defense(name, make_inner(model.parameters()), closure, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_state_and_defaults_are_the_inner_optimizers(name):
    model, opt = build(name)
    train(model, opt, 2)
    assert opt.param_groups is opt.inner.param_groups
    assert opt.state is opt.inner.state and len(opt.state) == len(list(model.parameters()))
    assert opt.defaults is opt.inner.defaults


@pytest.mark.parametrize("name", NAMES)
def test_scheduler_changes_the_inner_learning_rate(name):
    model, opt = build(name, make_inner=lambda params: torch.optim.SGD(params, lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: [1.0, 0.5, 0.0][min(epoch, 2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        train(model, opt, 1, scheduler=scheduler)
        assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.05)
        train(model, opt, 1, start=1, scheduler=scheduler)
    assert opt.param_groups is opt.inner.param_groups
    assert opt.inner.param_groups[0]["lr"] == 0.0
    before = flat_params(model)
    train(model, opt, 1, start=2)  # lr 0: plain SGD cannot move, whatever the rule adds
    assert torch.equal(flat_params(model), before)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resume_is_bit_identical(name):
    model, opt = build(name)
    scheduler = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=1.0, end_factor=0.1, total_iters=20
    )
    train(model, opt, 7, scheduler=scheduler)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()},
        buffer,
    )
    counters = opt.stats()
    train(model, opt, 8, start=7, scheduler=scheduler)
    uninterrupted = flat_params(model)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model2, opt2 = build(name, seed=5)  # different init: everything must come from the checkpoint
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    scheduler2 = torch.optim.lr_scheduler.LinearLR(
        opt2, start_factor=1.0, end_factor=0.1, total_iters=20
    )
    scheduler2.load_state_dict(checkpoint["sched"])
    assert opt2.num_steps == 7
    restored = opt2.stats()
    for key in ["num_steps", "num_nonfinite", "num_interventions", *type(opt).COUNTERS]:
        assert restored[key] == counters[key], key
    if name in SPAG_NAMES:
        assert opt2.num_projections == checkpoint["opt"]["spag"]["num_projections"]
    train(model2, opt2, 8, start=7, scheduler=scheduler2)
    assert torch.equal(flat_params(model2), uninterrupted)
    assert opt2.num_interventions == opt.num_interventions
    if name in SPAG_NAMES:
        assert opt2.num_projections == opt.num_projections > 0


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_does_not_mutate_the_checkpoint_and_accepts_plain_optimizer_state(name):
    model, opt = build(name)
    train(model, opt, 2)
    state = opt.state_dict()
    keys = set(state)
    _, opt2 = build(name)
    opt2.load_state_dict(state)
    assert set(state) == keys
    _, opt3 = build(name)
    with pytest.warns(MissingCheckpointEntryWarning, match="starts fresh"):
        opt3.load_state_dict(opt.inner.state_dict())  # a checkpoint of plain AdamW
    assert opt3.num_steps == 0


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_is_optimized(name):
    # SPAG with tau = 0 projects on every step, so the new group is projected too.
    overrides = {
        "spag": {"tau": 0.0, "trust_region": None},
        "spag_authors_code": {"tau": 0.0},
        "spag_repeated": {"tau": 0.0, "trust_region": None},
    }
    model, opt = build(name, **overrides.get(name, {}))
    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    assert len(opt.inner.param_groups) == 2 and opt.inner.param_groups[1]["lr"] == 0.1
    assert opt.param_groups[1]["lr"] == 0.1
    forward = model.net.forward
    model.net.forward = lambda x: forward(x) + extra  # both losses now depend on `extra`
    train(model, opt, 6)
    assert extra.abs().sum() > 0
    assert torch.isfinite(flat_params(model)).all()
    assert len(opt.state_dict()["param_groups"]) == 2
    if name in SPAG_NAMES:
        assert opt.num_projections == 6


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_zero_grad_and_utility_closure(name):
    model, opt = build(name)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    x, y = utility_batch(0)

    def closure():
        opt.zero_grad()
        loss = ((model.net(x) - y) ** 2).mean()
        loss.backward()
        return loss

    returned = opt.step(closure)
    assert calls == ["pre", "post"]
    assert isinstance(returned, torch.Tensor) and returned.ndim == 0
    assert opt.num_steps == 1
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "cls, kwargs, error",
    [
        (SPAGOptimizer, {"tau": -0.1}, ValueError),
        (SPAGOptimizer, {"tau": float("nan")}, ValueError),
        (SPAGOptimizer, {"tau": 0.5, "trust_region": 0.0}, ValueError),
        (SPAGOptimizer, {"tau": 0.5, "trust_region": -1.0}, ValueError),
        (SPAGOptimizer, {"tau": 0.5, "trust_region": "huge"}, ValueError),
        (SPAGOptimizer, {"tau": 0.5, "mode": "fast"}, ValueError),
        (SPAGOptimizer, {"tau": 0.5, "rho": 0.0}, ValueError),
        (SPAGOptimizer, {"tau": "0.2"}, TypeError),
        (PenaltyOptimizer, {"lam": 0.0}, ValueError),
        (PenaltyOptimizer, {"lam": float("nan")}, ValueError),
        (PenaltyOptimizer, {"tau": -1.0}, ValueError),
        (PenaltyOptimizer, {"lam": "1"}, TypeError),
        (LisaOptimizer, {"rho": -0.1}, ValueError),
        (LisaOptimizer, {"alignment_steps": -1}, ValueError),
        (LisaOptimizer, {"finetune_steps": 1.5}, ValueError),
        (LisaOptimizer, {"alignment_steps": 0, "finetune_steps": 0}, ValueError),
    ],
)
def test_bad_hyperparameters_fail_at_construction(cls, kwargs, error):
    model = PairLoss()
    closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    with pytest.raises(error):
        cls(torch.optim.SGD(model.parameters(), lr=0.1), closure, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inner_and_closure_fail_at_construction(name):
    model = PairLoss()
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer"):
        build_defense(name, model.parameters(), lambda: None)
    with pytest.raises(TypeError, match="callable"):
        build_defense(name, torch.optim.SGD(model.parameters(), lr=0.1), None)
    inner = build_defense(name, torch.optim.SGD(model.parameters(), lr=0.1), lambda: None)
    with pytest.raises(TypeError, match="cannot wrap another wrapper"):
        build_defense(name, inner, lambda: None)


@pytest.mark.parametrize(
    "closure, error, match",
    [
        (lambda net: None, TypeError, "returned None"),
        (lambda net: 1.0, TypeError, "torch.Tensor"),
        (lambda net: net(torch.ones(3, 4)).sum(0), ValueError, "scalar"),
        (lambda net: net(torch.ones(3, 4)).sum().detach(), ValueError, "grad_fn"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_closure_results_fail_clearly(name, closure, error, match):
    model = PairLoss()
    opt = build_defense(
        name, torch.optim.SGD(model.parameters(), lr=0.1), lambda: closure(model.net)
    )
    model.net(torch.ones(2, 4)).sum().backward()
    before = flat_params(model)
    with pytest.raises(error, match=match):
        opt.step()
    if name in SPAG_NAMES:  # SPAG takes the inner step first: theta+ stays, finite
        assert torch.isfinite(flat_params(model)).all() and not torch.equal(
            before, flat_params(model)
        )
    else:  # the baselines read the safety loss before they step: nothing moved
        assert torch.equal(before, flat_params(model))


def _nan_gradient_loss(model):
    # A finite loss whose gradient is NaN: d/dw sqrt(0 * w) = 0 * inf.
    return torch.sqrt(model.weight * 0.0).sum() + 1.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["nan_loss", "nan_gradient", "frozen"])
@pytest.mark.parametrize("scheduled", [False, True], ids=["plain", "lr_scheduler"])
def test_runtime_warnings_point_at_the_callers_step(name, case, scheduled):
    """A warning raised inside ``step()`` names the line of the caller's ``opt.step()``, not a
    frame of this library or of torch (warnings filters and logs then show the user's code),
    also when an LR scheduler has wrapped ``step`` in its counter."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.ones(3, 4)
    losses = {
        "nan_loss": lambda: model(x).sum() * float("nan"),
        "nan_gradient": lambda: _nan_gradient_loss(model),
        "frozen": lambda: model(x).sum(),
    }
    opt = build_defense(
        name,
        torch.optim.SGD(model.parameters(), lr=0.1),
        losses[case],
        **({"tau": 0.0} if name != "safegrad" and name != "lisa" else {}),
    )
    if scheduled:
        torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    if case == "frozen":
        model.requires_grad_(False)
    else:
        model(x).pow(2).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
        opt.step()  # SPAG reports a non-finite gradient counted on device at the next step's read
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert runtime, "expected a RuntimeWarning"
    assert {w.filename for w in runtime} == {__file__}, [(w.filename, w.lineno) for w in runtime]


def _line_of(function, code):
    """The line number of the first line of ``function`` that contains ``code``."""
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if code in line)


def test_spag_user_warnings_point_at_the_caller():
    """The tau check (warned from inside ``step()``) and the replaced hyper-parameters (warned
    from inside ``load_state_dict()``) name the caller's line."""
    from spag_optim.hyperparameters import FIRST_STEPS

    model, opt = build("spag", tau=0.2)  # safety loss ~ 6: every step projects far above tau
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)  # wraps step() again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, 2 * FIRST_STEPS, scheduler=scheduler)
        state = opt.state_dict()
        _, other = build("spag", tau=0.3)
        other.load_state_dict(state)
    user = [w for w in caught if issubclass(w.category, UserWarning)]
    (tau_warning,) = [w for w in user if "tau" in str(w.message) and "first" in str(w.message)]
    (load_warning,) = [w for w in user if "replace the constructed" in str(w.message)]
    # opt.step() is called by pair_model.train, load_state_dict() here.
    assert (tau_warning.filename, tau_warning.lineno) == (
        pair_model.__file__,
        _line_of(train, "opt.step()"),
    )
    assert load_warning.filename == __file__
