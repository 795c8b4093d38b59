"""The optimizer-shaped baselines behave like torch optimizers: schedulers, resume, groups, errors."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from spag_optim import SafetyBatches, make_safety_closure
from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer, SafeGradOptimizer

from pair_model import PairLoss, safe_dataset

BASELINES = {
    "penalty": lambda inner, closure: PenaltyOptimizer(inner, closure, lam=0.5, tau=0.1),
    "safegrad": lambda inner, closure: SafeGradOptimizer(inner, closure),
    "lisa": lambda inner, closure: LisaOptimizer(
        inner, closure, alignment_steps=2, finetune_steps=3, rho=0.3
    ),
}


def utility_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=g)
    return x, torch.stack([x.sum(1), -x.sum(1)], 1)


def build(name, seed=0, make_inner=lambda params: torch.optim.AdamW(params, lr=0.05)):
    model = PairLoss(seed)
    closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    return model, BASELINES[name](make_inner(model.parameters()), closure)


def train(model, opt, steps, start=0, scheduler=None):
    for step in range(start, start + steps):
        x, y = utility_batch(step)
        opt.zero_grad()
        ((model.net(x) - y) ** 2).mean().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def flat_params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_scheduler_changes_the_inner_learning_rate(name):
    model, opt = build(name, make_inner=lambda params: torch.optim.SGD(params, lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: [1.0, 0.5, 0.0][min(epoch, 2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        train(model, opt, 2, scheduler=scheduler)
    assert opt.param_groups is opt.inner.param_groups
    assert opt.inner.param_groups[0]["lr"] == 0.0
    before = flat_params(model)
    train(model, opt, 1, start=2)  # lr 0: plain SGD cannot move, whatever the rule adds
    assert torch.equal(flat_params(model), before)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_state_dict_resume_is_bit_identical(name):
    model, opt = build(name)
    scheduler = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=20)
    train(model, opt, 7, scheduler=scheduler)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()},
               buffer)
    train(model, opt, 8, start=7, scheduler=scheduler)
    uninterrupted = flat_params(model)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model2, opt2 = build(name, seed=5)  # different init: everything must come from the checkpoint
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    scheduler2 = torch.optim.lr_scheduler.LinearLR(opt2, start_factor=1.0, end_factor=0.1, total_iters=20)
    scheduler2.load_state_dict(checkpoint["sched"])
    assert opt2.num_steps == 7
    train(model2, opt2, 8, start=7, scheduler=scheduler2)
    assert torch.equal(flat_params(model2), uninterrupted)


def test_lisa_resume_needs_its_anchor():
    """Guard for the test above: without the saved anchor, Lisa's resumed run would differ."""
    model, opt = build("lisa")
    train(model, opt, 4)  # mid fine-tuning state, anchor != initial parameters
    state = opt.state_dict()
    assert len(state["lisa"]["anchor"]) == len(list(model.parameters()))
    assert not torch.equal(torch.cat([a.flatten() for a in state["lisa"]["anchor"]]),
                           flat_params(PairLoss(0)))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_add_param_group_is_optimized(name):
    model, opt = build(name)
    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    assert len(opt.inner.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.1
    forward = model.net.forward
    model.net.forward = lambda x: forward(x) + extra  # both losses now depend on `extra`
    train(model, opt, 6)
    assert extra.abs().sum() > 0
    assert torch.isfinite(flat_params(model)).all()
    state = opt.state_dict()
    assert len(state["param_groups"]) == 2


@pytest.mark.parametrize("name", sorted(BASELINES))
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
    with pytest.raises(error):
        cls(torch.optim.SGD(model.parameters(), lr=0.1), lambda: None, **kwargs)


@pytest.mark.parametrize("cls", [PenaltyOptimizer, LisaOptimizer, SafeGradOptimizer])
def test_bad_inner_and_closure_fail_clearly(cls):
    model = PairLoss()
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer"):
        cls(model.parameters(), lambda: None)
    with pytest.raises(TypeError, match="callable"):
        cls(torch.optim.SGD(model.parameters(), lr=0.1), None)
    net = model.net
    for closure, error, match in [
        (lambda: None, TypeError, "returned None"),
        (lambda: net(torch.ones(3, 4)).sum(0), ValueError, "scalar"),
        (lambda: net(torch.ones(3, 4)).sum().detach(), ValueError, "grad_fn"),
    ]:
        opt = cls(torch.optim.SGD(model.parameters(), lr=0.1), closure)
        net(torch.ones(2, 4)).sum().backward()
        with pytest.raises(error, match=match):
            opt.step()


@pytest.mark.parametrize("name", ["penalty", "safegrad"])
def test_nonfinite_safety_loss_falls_back_to_the_plain_step(name):
    model = PairLoss()
    twin = PairLoss()
    opt = BASELINES[name](torch.optim.SGD(model.net.parameters(), lr=0.1),
                          lambda: model.net(torch.ones(2, 4)).sum() * float("nan"))
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
    opt = LisaOptimizer(torch.optim.SGD(model.net.parameters(), lr=0.1),
                        lambda: model.net(torch.ones(2, 4)).sum() + float("inf"))
    with pytest.warns(RuntimeWarning, match="safety loss is inf"):
        opt.step()
    assert torch.equal(flat_params(model), before) and opt.num_nonfinite == 1


def test_registry_names_every_optimizer_baseline():
    from spag_optim.baselines import OPTIMIZER_BASELINES

    assert OPTIMIZER_BASELINES == {
        "penalty": PenaltyOptimizer, "lisa": LisaOptimizer, "safegrad": SafeGradOptimizer,
    }
