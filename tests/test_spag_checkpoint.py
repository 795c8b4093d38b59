"""Checkpoints load all or nothing, keep tau and the other hyper-parameters, and the rank's seed.

A checkpoint that lacks something is refused before anything changes, with a message naming
what is missing; SPAG's hyper-parameters travel in the ``"spag"`` entry (a loaded value that
differs from the constructed one warns); reading the counters or saving never warns; tau that is
far too low for the model is pointed out once, at the start of training.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from spag_optim import SafetyBatches, SPAGOptimizer, calibrate_tau, make_safety_closure, make_spag

from helpers.defenses import build_defense
from helpers.pair_model import PairLoss, safe_dataset, train

#: Options these tests change from the registry's: Lisa on a 2 + 2 cycle.
OPTIONS = {"lisa": {"finetune_steps": 2}}


def build(name="spag", seed=0, closure=None, **kw):
    model = PairLoss(seed)
    if closure is None:
        closure = make_safety_closure(model, SafetyBatches(safe_dataset(), batch_size=3, seed=7))
    inner = torch.optim.AdamW(model.parameters(), lr=0.05)
    return model, build_defense(name, inner, closure, **{**OPTIONS.get(name, {}), **kw})


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def everything(opt):
    """All state a load could change: the inner state and groups, counters, closure position."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return copy.deepcopy(opt.state_dict())


def drop(*path):
    def corrupt(state):
        entry = state
        for key in path[:-1]:
            entry = entry[key]
        del entry[path[-1]]
        return state

    return corrupt


CORRUPTIONS = {
    "counter": ("spag", drop("spag", "num_projections"), "num_projections"),
    "closure_position": ("spag", drop("spag", "safety_closure", "batches", "position"), "position"),
    "closure_state": ("spag", drop("spag", "safety_closure"), "safety_closure"),
    "closure_batches": ("spag", drop("spag", "safety_closure", "batches"), "batches"),
    "hyperparameter": ("spag", lambda s: s["spag"]["hyperparameters"].update(tau=-1.0) or s, "tau"),
    "not_a_dict": ("spag", lambda s: s.update(spag=[1, 2]) or s, "not a dict"),
    "inner_groups": ("spag", lambda s: s["param_groups"][0].update(params=[0]) or s, "size"),
    "penalty_counter": ("penalty", drop("penalty", "num_active"), "num_active"),
    "safegrad_counter": ("safegrad", drop("safegrad", "num_conflicts"), "num_conflicts"),
    "lisa_steps": ("lisa", drop("lisa", "num_steps"), "num_steps"),
    "lisa_anchor": (
        "lisa",
        lambda s: s["lisa"].update(anchor=s["lisa"]["anchor"][:2]) or s,
        "anchor",
    ),
}


def setting(entry, key, value):
    def corrupt(state):
        state[entry][key] = value
        return state

    return corrupt


#: Counters of the wrong type or sign: each used to load part of the checkpoint before failing (a
#: string num_steps after the inner state and lr, None num_projections after tau), or to load
#: silently (3.7 became 3, -1 stayed -1).
BAD_COUNTERS = {
    "steps_str": ("spag", setting("spag", "num_steps", "three"), "num_steps"),
    "projections_none": ("spag", setting("spag", "num_projections", None), "num_projections"),
    "projections_negative": ("spag", setting("spag", "num_projections", -1), "num_projections"),
    "projections_float": ("spag", setting("spag", "num_projections", 3.7), "num_projections"),
    "nonfinite_bool": ("spag", setting("spag", "num_nonfinite", True), "num_nonfinite"),
    "authors_float": (
        "spag_authors_code",
        setting("spag", "num_projections", 2.0),
        "num_projections",
    ),
    "penalty_str": ("penalty", setting("penalty", "num_active", "2"), "num_active"),
    "safegrad_negative": ("safegrad", setting("safegrad", "num_conflicts", -3), "num_conflicts"),
    "lisa_float": ("lisa", setting("lisa", "num_steps", 4.5), "num_steps"),
}
CORRUPTIONS.update(BAD_COUNTERS)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_bad_checkpoint_changes_nothing_and_says_what_is_missing(case):
    name, corrupt, match = CORRUPTIONS[case]
    model, opt = build(name)
    train(model, opt, 5)
    bad = corrupt(copy.deepcopy(opt.state_dict()))
    model2, opt2 = build(name, seed=3)
    train(model2, opt2, 2)
    before = everything(opt2)
    with pytest.raises(ValueError, match=match):
        opt2.load_state_dict(bad)
    assert same(everything(opt2), before)
    train(model2, opt2, 1, start=2)  # and it still trains


def test_a_closure_that_cannot_load_its_position_changes_nothing():
    model, opt = build()
    train(model, opt, 3)
    saved = opt.state_dict()
    model2 = PairLoss(3)
    opt2 = SPAGOptimizer(
        torch.optim.AdamW(model2.parameters(), lr=0.05),
        lambda: model2(**safe_dataset()[0]).loss,
        tau=0.5,
    )
    before = everything(opt2)
    with pytest.raises(ValueError, match="no load_state_dict"):
        opt2.load_state_dict(saved)
    assert same(everything(opt2), before)


def test_hyperparameters_round_trip_and_a_difference_warns():
    model, opt = build(tau=0.37, trust_region=0.25, rho=2.0, tolerance=0.1, skip_if_safe=False)
    train(model, opt, 2)
    saved = opt.state_dict()
    assert saved["spag"]["hyperparameters"] == {
        "tau": 0.37,
        "trust_region": 0.25,
        "rho": 2.0,
        "mode": "paper",
        "tolerance": 0.1,
        "alpha_max": 1.0,
        "eps": 1e-8,
        "skip_if_safe": False,
        "projection_iterations": 1,
    }
    _, same_opt = build(tau=0.37, trust_region=0.25, rho=2.0, tolerance=0.1, skip_if_safe=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same_opt.load_state_dict(saved)  # nothing differs: silent
    _, fresh = build()  # tau 0.5, the library's other defaults
    with pytest.warns(UserWarning, match=r"tau=0\.37 \(constructed with 0\.5\)") as caught:
        fresh.load_state_dict(saved)
    assert "trust_region=0.25" in str(caught[0].message) and "rho=2.0" in str(caught[0].message)
    assert (fresh.tau, fresh.trust_region, fresh.rho, fresh.tolerance, fresh.skip_if_safe) == (
        0.37,
        0.25,
        2.0,
        0.1,
        False,
    )


def test_counters_and_state_dict_never_warn():
    """A NaN safety gradient on the sync-free path is counted on device; reading it is silent."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda: torch.sqrt((model.weight - model.weight.detach()).abs().sum()) + 1.0,  # NaN grad
        tau=0.1,
        skip_if_safe=False,
    )
    model(torch.ones(2, 4)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        assert opt.num_nonfinite == 1
        assert opt.state_dict()["spag"]["num_nonfinite"] == 1
        assert opt.num_nonfinite == 1


def test_tau_far_too_low_warns_once_after_the_first_steps():
    from spag_optim.hyperparameters import FIRST_STEPS

    model, opt = build(tau=0.2)  # safety loss ~ 6 on this data: every step projects far above tau
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, FIRST_STEPS - 1)
        assert not caught
        train(model, opt, 3 * FIRST_STEPS, start=FIRST_STEPS - 1)
    messages = [str(w.message) for w in caught]
    assert (
        len(messages) == 1
        and "tau may be too low" in messages[0]
        and "calibrate_tau" in messages[0]
    )
    assert opt.num_projections >= FIRST_STEPS


@pytest.mark.parametrize("how", ["calibrated", "not_every_step_projects", "mode_authors_code"])
def test_tau_warning_stays_silent_when_tau_fits(how):
    from spag_optim.hyperparameters import FIRST_STEPS

    model = PairLoss()
    batches = SafetyBatches(safe_dataset(), batch_size=3, seed=7)
    closure = make_safety_closure(model, batches)
    tau = calibrate_tau(model, batches, num_batches=4)
    kw = {
        "calibrated": {"tau": tau},
        "mode_authors_code": {"tau": tau, "mode": "authors_code"},
        # far above only at first: the projection brings the loss under tau within the steps
        "not_every_step_projects": {"tau": tau / 3, "trust_region": None},
    }[how]
    opt = make_spag(torch.optim.AdamW(model.parameters(), lr=0.05), closure, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, 3 * FIRST_STEPS)
    if how == "not_every_step_projects":
        assert 0 < opt.num_projections < 3 * FIRST_STEPS


def test_calibrate_tau_leaves_the_batches_where_they_were():
    model = PairLoss()
    batches = SafetyBatches(
        safe_dataset(), batch_size=3, seed=7, collate_fn=torch.utils.data.default_collate
    )
    next(batches)
    position = batches.state_dict()
    twin = SafetyBatches(safe_dataset(), batch_size=3, seed=7)
    next(twin)
    first = next(copy.deepcopy(twin))
    tau = calibrate_tau(model, batches, num_batches=5)  # crosses a pass boundary (10 rows)
    with torch.no_grad():
        expected = np.mean([float(model(**next(twin)).loss) for _ in range(5)])
    assert tau == pytest.approx(expected, rel=1e-12)
    assert batches.state_dict() == position
    assert torch.equal(next(batches)["x"], first["x"])


def test_token_lists_without_collate_fn_say_what_to_do():
    for rows in (
        [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}],  # ragged
        [{"input_ids": [1, 2]}, {"input_ids": [4, 5]}],  # equal lengths
        [[1, 2, 3], [4, 5]],
    ):
        with pytest.raises(TypeError, match="pass collate_fn .* or use SafetyBatches.from_pairs"):
            SafetyBatches(rows, batch_size=2)
    SafetyBatches([{"input_ids": [1, 2]}], batch_size=1, collate_fn=list)  # with a collate_fn: fine


@pytest.mark.parametrize(
    "other",
    [
        lambda: safe_dataset(n=9),  # fewer examples
        lambda: safe_dataset(seed=2),  # as many, other content
    ],
    ids=["count", "content"],
)
def test_resuming_over_other_safe_data_warns(other):
    """A checkpoint's safe-batch position used to be loaded over any other safe data silently."""
    from spag_optim.warnings import SafeDataChangedWarning

    model, opt = build()
    train(model, opt, 3)
    saved = opt.state_dict()
    model2 = PairLoss()
    closure = make_safety_closure(model2, SafetyBatches(other(), batch_size=3, seed=7))
    opt2 = build_defense("spag", torch.optim.AdamW(model2.parameters(), lr=0.05), closure)
    with pytest.warns(SafeDataChangedWarning, match="other safe data"):
        opt2.load_state_dict(saved)
    assert opt2.safety_closure.batches.position == opt.safety_closure.batches.position
    _, same_data = build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same_data.load_state_dict(saved)
