"""A step whose safety part fails can be retried; inputs no step can handle fail before anything moves.

For every way a safety closure can fail (an exception, a simulated out-of-memory error in the
closure or in the safety backward, or a result that is not a scalar loss with a graph), calling
``step()`` again must give exactly the run whose closure never failed: the same parameters, the
same AdamW moments and step count, the same safe batches afterwards.
"""

from __future__ import annotations

import pytest
import torch

from spag_optim import SPAG_CLASSES, SafetyBatches, make_safety_closure, make_spag

from helpers.defenses import DEFENSES, build_defense
from helpers.pair_model import PairLoss, safe_dataset

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class OOMInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise OOM("CUDA out of memory (simulated, in the safety backward)")


def _raise(error):
    raise error


FAILURES = {
    "exception": lambda loss: _raise(RuntimeError("the safety data server went away")),
    "oom": lambda loss: _raise(OOM("CUDA out of memory (simulated)")),
    "oom_in_backward": lambda loss: OOMInBackward.apply(loss),
    "none": lambda loss: None,
    "float": lambda loss: float(loss),
    "detached": lambda loss: loss.detach(),
    "non_scalar": lambda loss: loss * torch.ones(2),
}


class FlakyClosure:
    """The real safety closure; when ``fail`` is set, the call after ``calls_before_failure`` more
    calls draws its batch and fails."""

    def __init__(self, closure):
        self.closure, self.fail, self.calls_before_failure = closure, None, 0

    def __call__(self):
        loss = self.closure()  # the batch is drawn before the failure, as in a real OOM
        if self.fail is not None and self.calls_before_failure > 0:
            self.calls_before_failure -= 1
            return loss
        fail, self.fail = self.fail, None
        return loss if fail is None else FAILURES[fail](loss)

    def state_dict(self):
        return self.closure.state_dict()

    def load_state_dict(self, state):
        self.closure.load_state_dict(state)


#: kind -> (defense, the options it changes from the registry's): tau 0 where a rule has one.
SPAG_KINDS = {
    "paper_relative": ("spag", {"tau": 0.0}),
    "paper_no_cap_no_read": ("spag", {"tau": 0.0, "trust_region": None, "skip_if_safe": False}),
    "authors_code": ("spag_authors_code", {"tau": 0.0}),
    "paper_repeated": ("spag", {"tau": 0.0, "projection_iterations": 3}),
    "penalty": ("penalty", {"tau": 0.0}),
    "safegrad": ("safegrad", {}),
    "lisa": ("lisa", {"finetune_steps": 2}),
}


def build(kind):
    model = PairLoss()
    closure = FlakyClosure(
        make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    )
    inner = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    name, options = SPAG_KINDS[kind]
    return model, build_defense(name, inner, closure, **options), closure


def utility_closure(model, opt, step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=g)
    y = torch.stack([x.sum(1), -x.sum(1)], 1)

    def closure():
        opt.zero_grad()
        loss = ((model.net(x) - y) ** 2).mean()
        loss.backward()
        return loss

    return closure


def run(kind, fail_at=None, failure=None, steps=4, calls_before_failure=0):
    model, opt, flaky = build(kind)
    losses = []
    for step in range(steps):
        closure = utility_closure(model, opt, step)
        if step == fail_at:
            flaky.fail, flaky.calls_before_failure = failure, calls_before_failure
            with pytest.raises((RuntimeError, TypeError, ValueError)):
                opt.step(closure)
        losses.append(float(opt.step(closure).detach()))  # the retry (or a normal step)
    return model, opt, losses


def assert_same_run(a, b):
    (model_a, opt_a, losses_a), (model_b, opt_b, losses_b) = a, b
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
        sa, sb = opt_a.inner.state[p], opt_b.inner.state[q]
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key  # AdamW's moments and step count
    assert losses_a == losses_b
    assert opt_a.num_steps == opt_b.num_steps
    assert opt_a.safety_closure.state_dict() == opt_b.safety_closure.state_dict()
    if isinstance(opt_a, SPAG_CLASSES):
        assert opt_a.num_projections == opt_b.num_projections > 0


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("kind", ["paper_relative", "paper_no_cap_no_read", "authors_code"])
def test_a_retried_spag_step_equals_a_step_whose_closure_never_failed(kind, failure):
    assert_same_run(run(kind, fail_at=2, failure=failure), run(kind))


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("calls_before_failure", [0, 1, 2])
def test_a_repeated_projection_that_fails_part_way_is_retried_from_theta_plus(
    failure, calls_before_failure
):
    # tau = 0: every step makes all three projections; the failure hits the first call of the
    # step's safety part, or the first or second repeat, after earlier projections moved the model.
    assert_same_run(
        run(
            "paper_repeated", fail_at=2, failure=failure, calls_before_failure=calls_before_failure
        ),
        run("paper_repeated"),
    )


@pytest.mark.parametrize("failure", ["exception", "oom", "oom_in_backward", "none"])
@pytest.mark.parametrize("kind", ["penalty", "safegrad", "lisa"])
def test_a_retried_baseline_step_equals_a_step_whose_closure_never_failed(kind, failure):
    # step 1 is one of Lisa's alignment steps (the only ones that run its closure)
    assert_same_run(run(kind, fail_at=1, failure=failure), run(kind))


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("trust_region", ["relative", None, "lr", 0.1])
@pytest.mark.parametrize("mode", ["paper", "authors_code"])
def test_every_parameter_frozen_is_a_step_with_nothing_to_project(mode, trust_region):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    calls = []
    opt = make_spag(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: calls.append(1) or model(torch.ones(2, 4)).sum(),
        tau=0.0,
        trust_region=trust_region,
        mode=mode,
    )
    model.requires_grad_(False)
    before = flat(model)
    with pytest.warns(RuntimeWarning, match="frozen"):
        opt.step()
    opt.step()  # warned once
    assert torch.equal(flat(model), before) and calls == [] and opt.num_steps == 2
    assert opt.num_projections == 0 and not opt.last_stats["projected"]


@pytest.mark.parametrize("name", ["penalty", "safegrad", "lisa"])
def test_every_parameter_frozen_is_a_step_with_nothing_to_do_for_the_baselines(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    calls = []
    closure = lambda: calls.append(1) or model(torch.ones(2, 4)).sum()  # noqa: E731
    opt = build_for_edge_case(name, torch.optim.SGD(model.parameters(), lr=0.1), closure)
    model.requires_grad_(False)
    before = flat(model)
    with pytest.warns(RuntimeWarning, match="frozen"):
        opt.step()
    assert torch.equal(flat(model), before) and calls == [] and opt.num_steps == 1


class EmbeddingLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(5, 3, sparse=True)

    def forward(self):
        return self.emb(torch.tensor([0, 2, 2])).pow(2).sum()


#: The options the edge-case tests (frozen, sparse, complex parameters) change from the registry's:
#: tau 0 (every rule would act on the first step), the library's lam and rho, a 1 + 1 Lisa cycle.
EDGE_CASE_OPTIONS = {
    "spag": {"tau": 0.0},
    "spag_authors_code": {"tau": 0.0},
    "penalty": {"lam": 1.0, "tau": 0.0},
    "safegrad": {},
    "lisa": {"alignment_steps": 1, "finetune_steps": 1, "rho": 1.0},
}


def build_for_edge_case(name, inner, closure):
    return build_defense(name, inner, closure, **EDGE_CASE_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_sparse_gradients_are_refused_before_anything_moves(name):
    model = EmbeddingLoss()
    calls = []
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # SGD takes sparse grads
    opt = build_for_edge_case(name, inner, lambda: calls.append(1) or model())
    model().backward()
    before = flat(model)
    with pytest.raises(ValueError, match="sparse gradient"):
        opt.step()
    assert torch.equal(flat(model), before) and calls == []
    assert not inner.state[model.emb.weight] and opt.num_steps == 0


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_complex_parameters_are_refused_at_construction_and_in_new_groups(name):
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        build_for_edge_case(name, torch.optim.SGD([z], lr=0.1), lambda: (z.abs() ** 2).sum())
    w = torch.nn.Parameter(torch.randn(3))
    opt = build_for_edge_case(name, torch.optim.SGD([w], lr=0.1), lambda: (w**2).sum())
    with pytest.raises(TypeError, match="complex"):
        opt.add_param_group({"params": [z]})
    assert len(opt.param_groups) == 1
