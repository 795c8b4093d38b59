"""SPAGOptimizer's own plumbing: the "lr" trust region, its stats, non-finite and zero safety
gradients, safety batches, tau calibration. The contract every wrapper shares (hooks, schedulers,
resume, add_param_group, bad input) is tested in ``test_wrapper_contract.py``."""

import math
import warnings

import pytest
import torch

from spag_optim import SafetyBatches, SPAGOptimizer, calibrate_tau, make_safety_closure, make_spag
from spag_optim.warnings import ZeroSafetyGradientWarning

from helpers.pair_model import flat_params, safe_dataset, train


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


class PairLoss(torch.nn.Module):
    """Wraps a model so that ``model(x=..., y=...)`` returns an object with ``.loss`` (HF style)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        return type("Out", (), {"loss": ((self.net(x) - y) ** 2).mean()})()


def build(seed=0, tau=0.5, **kw):
    wrapper = PairLoss(tiny_model(seed))
    closure = make_safety_closure(wrapper, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    inner = torch.optim.AdamW(wrapper.parameters(), lr=0.05)
    return wrapper, make_spag(inner, closure, tau=tau, **kw)


def test_lr_trust_region_follows_the_scheduled_learning_rate():
    wrapper, opt = build(trust_region="lr")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        train(wrapper, opt, 3, scheduler=scheduler)
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    train(wrapper, opt, 1, start=3)
    lr = opt.inner.param_groups[0]["lr"]
    assert float(opt.last_stats["alpha"]) == pytest.approx(lr, rel=1e-6)  # capped, in float32


def test_last_stats_and_counters_report_the_step():
    wrapper, opt = build(tau=0.0)
    train(wrapper, opt, 3)
    stats = opt.last_stats
    assert set(stats) >= {"safety_loss", "projected", "alpha", "safety_grad_norm"}
    assert float(stats["alpha"]) > 0 and bool(stats["projected"])
    assert opt.num_projections == opt.num_steps == 3
    saved = opt.state_dict()["spag"]
    assert saved["num_projections"] == 3 and saved["safety_closure"]["batches"]["position"] > 0


def theta_plus(seed=0):
    """Parameters after one plain SGD step: what a skipped projection must leave."""
    model = tiny_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return flat_params(model)


NONFINITE_LOSSES = {
    "nan_loss": lambda m: m(torch.ones(2, 4)).sum() * float("nan"),
    "inf_loss": lambda m: m(torch.ones(2, 4)).sum() + float("inf"),
    # finite loss (= 1) whose gradient is NaN: d sqrt(u)/du = inf at u = 0, times 0
    "nan_grad": lambda m: torch.sqrt((m[0].weight - m[0].weight.detach()).abs().sum()) + 1.0,
}


@pytest.mark.parametrize("name", sorted(NONFINITE_LOSSES))
@pytest.mark.parametrize("skip_if_safe", [True, False])
@pytest.mark.parametrize("mode", ["paper", "authors_code"])
def test_nonfinite_safety_loss_or_gradient_leaves_theta_plus(name, skip_if_safe, mode):
    model = tiny_model()
    opt = make_spag(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: NONFINITE_LOSSES[name](model),
        tau=0.1,
        trust_region=None,
        skip_if_safe=skip_if_safe,
        mode=mode,
    )
    model(torch.ones(2, 4)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
        assert opt.num_nonfinite == 1 and opt.num_projections == 0  # reading them never warns
        opt.state_dict()
    assert torch.equal(flat_params(model), theta_plus())
    # Paper mode finds a NaN gradient (and, without the host read, a NaN loss) on device: it is
    # counted there and warned about at the next step's read; the sync-free path never warns.
    deferred = mode == "paper" and (name == "nan_grad" or not skip_if_safe)
    assert len([w for w in caught if "SPAG" in str(w.message)]) == (0 if deferred else 1)
    if deferred and skip_if_safe:
        with pytest.warns(RuntimeWarning, match="earlier step"):
            opt.step()


@pytest.mark.parametrize("skip_if_safe", [True, False])
@pytest.mark.parametrize("trust_region", [None, 0.1, "relative", "lr"])
def test_zero_safety_gradient_never_divides_by_zero(skip_if_safe, trust_region):
    model = tiny_model()
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: 0.0 * sum(p.sum() for p in model.parameters()) + 5.0,
        tau=0.1,
        trust_region=trust_region,
        eps=0.0,
        skip_if_safe=skip_if_safe,
    )
    model(torch.ones(2, 4)).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    assert torch.equal(flat_params(model), theta_plus())
    assert float(opt.last_stats["alpha"]) == 0.0 and opt.num_projections == 0
    # Said once where the host reads are allowed (skip_if_safe); the sync-free path never reads it.
    named = [w for w in caught if "safety gradient is zero" in str(w.message)]
    assert len(named) == (1 if skip_if_safe else 0)


def test_safety_batches_cycle_reshuffle_with_seed_and_resume():
    data = list(range(10))
    batches = SafetyBatches(data, batch_size=4, seed=3, collate_fn=list)
    first_pass = [next(batches) for _ in range(3)]
    second_pass = [next(batches) for _ in range(3)]
    assert sorted(sum(first_pass, [])) == data and sorted(sum(second_pass, [])) == data
    assert first_pass != second_pass  # reshuffled on the new pass
    again = SafetyBatches(data, batch_size=4, seed=3, collate_fn=list)
    assert [next(again) for _ in range(3)] == first_pass  # same seed, same order
    resumed = SafetyBatches(data, batch_size=4, seed=3, collate_fn=list)
    resumed.load_state_dict(again.state_dict())
    assert [next(resumed) for _ in range(3)] == second_pass
    with pytest.raises(ValueError, match="empty"):
        SafetyBatches([], batch_size=2)


def test_safety_batches_cycle_a_dataloader_and_move_to_device():
    loader = torch.utils.data.DataLoader(torch.arange(5.0), batch_size=2)
    batches = SafetyBatches(loader, device="cpu")
    got = [next(batches) for _ in range(4)]
    assert [b.tolist() for b in got] == [[0.0, 1.0], [2.0, 3.0], [4.0], [0.0, 1.0]]


def test_calibrate_tau_is_the_mean_safety_loss_in_eval_mode():
    wrapper = PairLoss(tiny_model())
    wrapper.train()
    data = safe_dataset(6)
    batches = [torch.utils.data.default_collate(data[i : i + 2]) for i in range(0, 6, 2)]
    with torch.no_grad():
        expected = sum(float(wrapper(**b).loss) for b in batches) / 3
    assert calibrate_tau(wrapper, batches) == pytest.approx(expected, rel=1e-12)
    assert wrapper.training
    endless = SafetyBatches(data, batch_size=2, shuffle=False)
    assert calibrate_tau(wrapper, endless, num_batches=3) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="num_batches"):
        calibrate_tau(wrapper, SafetyBatches(data, batch_size=2))
    assert math.isfinite(expected)


@pytest.mark.parametrize("mode", ["paper", "authors_code"])
def test_a_safety_loss_that_misses_the_parameters_is_named_not_blamed_on_tau(mode):
    wrapper, other_copy = PairLoss(tiny_model()), PairLoss(tiny_model())
    closure = make_safety_closure(other_copy, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    opt = make_spag(torch.optim.AdamW(wrapper.parameters(), lr=0.05), closure, tau=0.0, mode=mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(wrapper, opt, 12)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "safety gradient is zero" in messages[0], messages
    assert (
        "another copy of the model" in messages[0]
        and caught[0].category is ZeroSafetyGradientWarning
    )
    # A loss that reaches the parameters is not warned about.
    wrapper, opt = build(tau=0.0, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(wrapper, opt, 2)


def test_a_closure_over_a_finite_list_says_it_ran_out():
    wrapper = PairLoss(tiny_model())
    data = safe_dataset(4)
    batches = [torch.utils.data.default_collate(data[i : i + 2]) for i in range(0, 4, 2)]
    opt = SPAGOptimizer(
        torch.optim.SGD(wrapper.parameters(), lr=0.1),
        make_safety_closure(wrapper, batches),
        tau=0.0,
    )
    train(wrapper, opt, 2)
    with pytest.raises(ValueError, match=r"ran out after 2 batches.*SafetyBatches\("):
        train(wrapper, opt, 1, start=2)


@pytest.mark.parametrize("num_batches", [2.5, True, 0, "2"])
def test_calibrate_tau_refuses_a_batch_count_that_is_not_a_positive_int(num_batches):
    wrapper = PairLoss(tiny_model())
    with pytest.raises(ValueError, match="num_batches must be a positive int"):
        calibrate_tau(
            wrapper, SafetyBatches(safe_dataset(6), batch_size=2), num_batches=num_batches
        )


def test_calibrate_tau_names_a_loss_fn_that_returns_none():
    wrapper = PairLoss(tiny_model())
    with pytest.raises(TypeError, match="loss_fn returned None; it must return the safety loss"):
        calibrate_tau(
            wrapper,
            SafetyBatches(safe_dataset(6), batch_size=2),
            num_batches=1,
            loss_fn=lambda model, batch: None,
        )


@pytest.mark.parametrize(
    "output, named",
    [
        (lambda loss: (loss, loss.detach()), "a tuple"),  # return_dict=False: (loss, logits)
        (lambda loss: loss, "a Tensor"),
    ],
    ids=["tuple", "tensor"],
)
def test_a_model_that_returns_no_output_object_is_told_so(output, named):
    """A model returning a tuple was told to "include 'labels'", which it had."""

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x, y):
            return output(((self.net(x) - y) ** 2).mean())

    closure = make_safety_closure(Plain(), SafetyBatches(safe_dataset(), batch_size=3))
    with pytest.raises(ValueError, match=rf"returned {named}.*loss_fn=") as error:
        closure()
    assert "include 'labels'" not in str(error.value)


def test_calibrate_tau_refuses_fewer_batches_than_it_was_asked_to_average():
    """num_batches=8 over a list of 2 batches averaged 2 without a word."""
    wrapper = PairLoss(tiny_model())
    data = safe_dataset(4)
    batches = [torch.utils.data.default_collate(data[i : i + 2]) for i in range(0, 4, 2)]
    with pytest.raises(ValueError, match=r"num_batches=8 but the batches ended after 2"):
        calibrate_tau(wrapper, batches, num_batches=8)
    assert calibrate_tau(wrapper, batches, num_batches=2) == calibrate_tau(wrapper, batches)


@pytest.mark.parametrize(
    "data, seed, match",
    [
        ({"x": [1, 2]}, 0, "one dict"),  # used to be KeyError: 0
        ([1, 2], "x", "seed must be an int"),  # used to be "invalid literal for int()"
    ],
    ids=["dict", "string_seed"],
)
def test_safety_batches_name_a_dict_or_a_bad_seed(data, seed, match):
    with pytest.raises((TypeError, ValueError), match=match):
        SafetyBatches(data, batch_size=1, seed=seed, collate_fn=list)


def test_load_state_dict_of_something_that_is_not_a_state_dict_is_named():
    """``load_state_dict(None)`` said "'NoneType' object is not iterable"."""
    _, opt = build()
    with pytest.raises(
        TypeError, match=r"load_state_dict takes the dict .*state_dict\(\).*NoneType"
    ):
        opt.load_state_dict(None)
