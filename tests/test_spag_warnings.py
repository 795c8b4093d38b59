"""One warning policy: every warning ``spag_optim`` raises has its own category under
:class:`spag_optim.warnings.SPAGWarning` and goes through ``warn_at_caller``; logging is for
progress only."""

import ast
import pathlib
import warnings

import pytest
import torch

import spag_optim
from spag_optim import AuthorsCodeSPAG, SafetyBatches, SPAGOptimizer, make_safety_closure, make_spag
from spag_optim.baselines import PenaltyOptimizer
from spag_optim.hyperparameters import FIRST_STEPS
from spag_optim.warnings import (
    FrozenParametersWarning,
    MissingCheckpointEntryWarning,
    NonFiniteWarning,
    ReplacedHyperparameterWarning,
    SPAGWarning,
    TauTooLowWarning,
    UnrestorablePositionWarning,
)

from helpers import pair_model

PACKAGE = pathlib.Path(spag_optim.__file__).parent


def linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def utility_step(model, opt):
    opt.zero_grad()
    model(torch.ones(4, 3)).pow(2).mean().backward()
    return opt.step()


def test_every_category_is_a_spag_warning_exported_for_filtering():
    categories = [getattr(spag_optim.warnings, name) for name in spag_optim.warnings.__all__]
    assert len(categories) >= 10
    assert all(
        issubclass(c, SPAGWarning) and c.__name__ in spag_optim.warnings.__doc__ for c in categories
    )
    assert issubclass(SPAGWarning, UserWarning) and issubclass(NonFiniteWarning, RuntimeWarning)


@pytest.mark.parametrize("mode", ["paper", "authors_code"])
def test_a_nonfinite_safety_loss_is_a_nonfinite_warning(mode):
    model = linear()
    opt = make_spag(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: model.weight.sum() * float("nan"),
        tau=0.0,
        mode=mode,
    )
    with pytest.warns(NonFiniteWarning, match="safety loss is nan"):
        utility_step(model, opt)


def test_a_nonfinite_safety_gradient_on_the_device_path_is_a_nonfinite_warning():
    model = linear()
    # finite loss (= 1) whose gradient is NaN: d sqrt(u)/du = inf at u = 0, times 0
    closure = lambda: torch.sqrt((model.weight - model.weight.detach()).abs().sum()) + 1.0  # noqa: E731
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), closure, tau=0.1, trust_region=None
    )
    utility_step(model, opt)  # counted on device, read back with the next step's loss
    with pytest.warns(NonFiniteWarning, match="non-finite safety gradient"):
        utility_step(model, opt)


def test_a_baseline_nonfinite_loss_is_a_nonfinite_warning():
    model = linear()
    opt = PenaltyOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), lambda: model.weight.sum() * float("inf")
    )
    with pytest.warns(NonFiniteWarning, match="Penalty"):
        utility_step(model, opt)


@pytest.mark.parametrize("cls", [SPAGOptimizer, AuthorsCodeSPAG, PenaltyOptimizer])
def test_every_parameter_frozen_is_a_frozen_parameters_warning(cls):
    model = linear()
    opt = cls(torch.optim.SGD(model.parameters(), lr=0.1), lambda: model.weight.sum())
    model.requires_grad_(False)
    with pytest.warns(FrozenParametersWarning, match="frozen"):
        opt.step()


def test_a_tau_far_below_the_loss_is_a_tau_too_low_warning():
    model = linear()
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01),
        lambda: model.weight.pow(2).sum() + 10.0,
        tau=0.1,
    )
    with pytest.warns(TauTooLowWarning, match="tau may be too low"):
        for _ in range(FIRST_STEPS):
            utility_step(model, opt)


def test_a_checkpoint_with_other_hyperparameters_is_a_replaced_hyperparameter_warning():
    model = linear()
    saved = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), lambda: model.weight.sum(), tau=0.3
    )
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), lambda: model.weight.sum(), tau=0.5
    )
    with pytest.warns(ReplacedHyperparameterWarning, match="tau=0.3"):
        opt.load_state_dict(saved.state_dict())
    assert opt.tau == 0.3


@pytest.mark.parametrize("cls", [SPAGOptimizer, AuthorsCodeSPAG, PenaltyOptimizer])
def test_a_plain_optimizer_checkpoint_is_a_missing_checkpoint_entry_warning(cls):
    model = linear()
    opt = cls(torch.optim.SGD(model.parameters(), lr=0.1), lambda: model.weight.sum())
    with pytest.warns(
        MissingCheckpointEntryWarning, match=f"no '{opt.STATE_KEY}' entry.*starts fresh"
    ):
        opt.load_state_dict(opt.inner.state_dict())


def test_safe_batches_over_a_dataloader_warn_that_they_restart():
    loader = torch.utils.data.DataLoader(torch.arange(5.0), batch_size=2)
    batches = SafetyBatches(loader)
    next(batches)
    with pytest.warns(UnrestorablePositionWarning, match="restarting"):
        batches.load_state_dict(batches.state_dict())


def test_a_warning_inside_step_names_the_callers_line():
    model = pair_model.PairLoss()
    closure = make_safety_closure(
        model, SafetyBatches(pair_model.safe_dataset(), batch_size=3, seed=7)
    )
    opt = SPAGOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), closure)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.load_state_dict(opt.inner.state_dict())
    assert [w.filename for w in caught] == [__file__]


def calls_in(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield path.relative_to(PACKAGE).as_posix(), ast.unparse(node.func), node


def test_every_warning_goes_through_the_one_helper_with_a_project_category():
    """No ``warnings.warn`` outside the helper, no ``logger.warning`` (logging is for progress:
    a retried request is the one ``logger.warning``), and every category a project one."""
    found = [
        (f, func)
        for path in sorted(PACKAGE.rglob("*.py"))
        for f, func, _ in calls_in(path)
        if func in ("warnings.warn", "logger.warning", "logging.warning")
    ]
    assert found == [
        ("_caller_warning.py", "warnings.warn"),
        ("evaluation/openai_judge.py", "logger.warning"),
    ]
    helper_calls = [
        node
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "warn_at_caller"
    ]
    assert len(helper_calls) >= 10
    names = {ast.unparse(node.args[1]) for node in helper_calls}
    assert names <= set(spag_optim.warnings.__all__), names
