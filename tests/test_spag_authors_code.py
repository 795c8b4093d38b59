"""``SPAGOptimizer(mode="authors_code")`` is an alias that constructs :class:`AuthorsCodeSPAG`."""

import copy

import pytest
import torch

from spag_optim import AuthorsCodeSPAG, SPAGOptimizer


def build(cls=SPAGOptimizer, seed=0, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2).double()
    x = torch.randn(8, 3, dtype=torch.float64)

    def safety():
        return (model(x) ** 2).mean()  # > tau = 0 on every step: the rule always acts

    return model, x, cls(torch.optim.SGD(model.parameters(), lr=0.1), safety, tau=0.0, **kw)


def train(model, x, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - 1.0) ** 2).mean().backward()
        opt.step()


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_alias_constructs_the_authors_code_class():
    _, _, opt = build(mode="authors_code")
    assert type(opt) is AuthorsCodeSPAG and isinstance(opt, SPAGOptimizer)
    assert opt.mode == "authors_code" and "mode='authors_code'" in repr(opt)
    _, _, paper = build()
    assert type(paper) is SPAGOptimizer and paper.mode == "paper"


def test_the_alias_and_the_class_take_the_same_steps_and_checkpoints():
    model_a, x, alias = build(mode="authors_code", alpha_max=0.3)
    model_b, _, direct = build(AuthorsCodeSPAG, alpha_max=0.3)
    train(model_a, x, alias, 3)
    train(model_b, x, direct, 3)
    assert torch.equal(flat(model_a), flat(model_b))
    assert alias.num_projections == direct.num_projections == 3
    saved_a, saved_b = alias.state_dict()["spag"], direct.state_dict()["spag"]
    assert saved_a == saved_b and saved_a["hyperparameters"]["mode"] == "authors_code"


def test_copies_keep_the_class():
    _, _, opt = build(mode="authors_code")
    assert type(copy.deepcopy(opt)) is AuthorsCodeSPAG
    assert type(copy.copy(opt)) is AuthorsCodeSPAG


def test_the_class_refuses_the_paper_mode():
    with pytest.raises(ValueError, match="SPAGOptimizer"):
        build(AuthorsCodeSPAG, mode="paper")


def test_a_checkpoint_of_the_other_mode_restores_its_rule():
    """As before the split: loading restores the saved mode (with a warning), and the rule."""
    model, x, paper = build(trust_region=None)
    train(model, x, paper, 2)
    model2, x2, opt = build(mode="authors_code")
    with pytest.warns(UserWarning, match="mode='paper'"):
        opt.load_state_dict(paper.state_dict())
    assert type(opt) is SPAGOptimizer and opt.mode == "paper"
    # hooks registered on the optimizer still fire after it changed class
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    train(model2, x2, opt, 1)
    assert calls == [1] and opt.num_projections == 3
