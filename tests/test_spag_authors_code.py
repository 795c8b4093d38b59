"""The two SPAG rules are sibling classes: :class:`SPAGOptimizer` (the paper's Eq. 3-4) and
:class:`AuthorsCodeSPAG` (the authors' released code), chosen by :func:`make_spag` from ``mode``.

No object changes its class: a checkpoint of the other rule is refused before anything is loaded.
"""

import copy
import inspect

import pytest
import torch

from spag_optim import (
    AuthorsCodeSPAG,
    OptimizerWrapper,
    SafetyClosureOptimizer,
    SPAGOptimizer,
    make_spag,
)

from helpers.defenses import DEFENSES


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


def project_classes(cls):
    return [c for c in cls.__mro__ if c.__module__.split(".")[0] == "spag_optim"]


@pytest.mark.parametrize("cls", list(DEFENSES.values()), ids=lambda cls: cls.__name__)
def test_every_defense_is_at_most_three_project_classes_deep(cls):
    assert project_classes(cls) == [cls, SafetyClosureOptimizer, OptimizerWrapper]
    assert "__new__" not in vars(cls)


def test_the_two_rules_are_siblings():
    assert not issubclass(AuthorsCodeSPAG, SPAGOptimizer)
    assert not issubclass(SPAGOptimizer, AuthorsCodeSPAG)


@pytest.mark.parametrize("cls", [SPAGOptimizer, AuthorsCodeSPAG], ids=lambda cls: cls.__name__)
def test_the_signature_shows_every_argument_and_its_default(cls):
    parameters = inspect.signature(cls).parameters
    defaults = {name: p.default for name, p in parameters.items()}
    assert list(defaults)[:2] == ["inner", "safety_closure"]
    assert {
        name: defaults[name]
        for name in (
            "tau",
            "trust_region",
            "rho",
            "tolerance",
            "alpha_max",
            "eps",
            "skip_if_safe",
            "distributed",
        )
    } == {
        "tau": 0.2,
        "trust_region": "relative",
        "rho": 1.0,
        "tolerance": 0.0,
        "alpha_max": 1.0,
        "eps": 1e-8,
        "skip_if_safe": True,
        "distributed": "auto",
    }
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())


@pytest.mark.parametrize("mode, cls", [("paper", SPAGOptimizer), ("authors_code", AuthorsCodeSPAG)])
def test_make_spag_builds_the_class_of_the_mode(mode, cls):
    _, _, opt = build(make_spag, mode=mode)
    assert type(opt) is cls and opt.mode == mode and f"mode={mode!r}" in repr(opt)


def test_make_spag_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="'paper', 'authors_code'"):
        build(make_spag, mode="released")


def test_spag_optimizer_refuses_the_authors_code_mode_and_names_the_replacement():
    with pytest.raises(ValueError, match=r"AuthorsCodeSPAG\(.*make_spag\("):
        build(mode="authors_code")


def test_the_authors_code_class_refuses_the_paper_mode():
    with pytest.raises(ValueError, match=r"SPAGOptimizer\(.*make_spag\("):
        build(AuthorsCodeSPAG, mode="paper")


def test_the_factory_and_the_class_take_the_same_steps_and_checkpoints():
    model_a, x, made = build(make_spag, mode="authors_code", alpha_max=0.3)
    model_b, _, direct = build(AuthorsCodeSPAG, alpha_max=0.3)
    train(model_a, x, made, 3)
    train(model_b, x, direct, 3)
    assert torch.equal(flat(model_a), flat(model_b))
    assert made.num_projections == direct.num_projections == 3
    saved_a, saved_b = made.state_dict()["spag"], direct.state_dict()["spag"]
    assert saved_a == saved_b and saved_a["hyperparameters"]["mode"] == "authors_code"


def test_copies_keep_the_class():
    _, _, opt = build(AuthorsCodeSPAG)
    assert type(copy.deepcopy(opt)) is AuthorsCodeSPAG
    assert type(copy.copy(opt)) is AuthorsCodeSPAG


@pytest.mark.parametrize(
    "saver, loader", [(SPAGOptimizer, AuthorsCodeSPAG), (AuthorsCodeSPAG, SPAGOptimizer)]
)
def test_a_checkpoint_of_the_other_rule_is_refused_before_anything_changes(saver, loader):
    model, x, saved = build(saver, trust_region=None)
    train(model, x, saved, 2)
    checkpoint = saved.state_dict()
    model2, x2, opt = build(loader, seed=1)
    train(model2, x2, opt, 1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(
        ValueError, match=rf"{saver.__name__}.*make_spag\(.*mode=.*Nothing was loaded"
    ):
        opt.load_state_dict(checkpoint)
    assert type(opt) is loader and opt.num_projections == 1
    after = opt.state_dict()
    assert after["spag"] == before["spag"] and str(after["state"]) == str(before["state"])


def test_make_spag_resumes_a_checkpoint_in_its_own_rule():
    model, x, saved = build(AuthorsCodeSPAG)
    train(model, x, saved, 2)
    checkpoint = saved.state_dict()
    _, _, opt = build(make_spag, mode=checkpoint["spag"]["hyperparameters"]["mode"])
    opt.load_state_dict(checkpoint)
    assert type(opt) is AuthorsCodeSPAG and opt.num_projections == 2
