"""SPAGConfig (SPAG's hyper-parameters as a run config) and ``spag_optim.__version__``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json

import numpy as np
import pytest
import torch

import spag_optim
from spag_optim import SPAGConfig, SPAGOptimizer
from spard_io import version as spard_version


def test_fields_are_the_optimizers_hyperparameters_with_its_defaults():
    signature = inspect.signature(SPAGOptimizer.__init__).parameters
    fields = {f.name: f.default for f in dataclasses.fields(SPAGConfig)}
    runtime_objects = {"self", "inner", "safety_closure", "process_group", "grad_scaler"}
    assert set(fields) == set(signature) - runtime_objects
    assert fields == {name: signature[name].default for name in fields}


def test_the_optimizer_takes_the_config_and_saves_its_values():
    p = torch.ones(2, requires_grad=True)
    config = SPAGConfig(tau=0.7, trust_region=0.5, rho=2.0, tolerance=0.1, skip_if_safe=False)
    opt = SPAGOptimizer(torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum(), **config.to_dict())
    saved = opt.state_dict()["spag"]["hyperparameters"]
    assert {k: v for k, v in config.to_dict().items() if k in saved} == saved
    assert opt.distributed == config.distributed


def test_round_trips_through_dict_and_json(tmp_path):
    config = SPAGConfig(tau=np.float32(0.75), trust_region=None, mode="authors_code")
    assert config.tau == 0.75 and type(config.tau) is float  # plain values: JSON can hold them
    assert SPAGConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "spag_config.json"
    config.to_json_file(path)
    assert json.loads(path.read_text())["trust_region"] is None
    assert SPAGConfig.from_json_file(path) == config
    assert SPAGConfig.from_dict({"tau": "calibrate"}) == SPAGConfig(tau="calibrate")


@pytest.mark.parametrize(
    "values, error, match",
    [
        ({"rho": -1.0}, ValueError, "rho must be finite and > 0"),
        ({"tau": "calibrated"}, TypeError, "tau must be a number"),
        ({"mode": "fast"}, ValueError, "unknown mode"),
        ({"distributed": "nccl"}, ValueError, "unknown distributed"),
        ({"skip_if_safe": "no"}, TypeError, "skip_if_safe must be True or False"),
    ],
)
def test_bad_values_raise_the_optimizers_error(values, error, match):
    with pytest.raises(error, match=match):
        SPAGConfig(**values)


@pytest.mark.parametrize("spelling", ["Calibrate", " CALIBRATE "])
def test_calibrate_is_recognised_in_any_case(spelling):
    assert SPAGConfig(tau=spelling).tau == "calibrate"
    assert SPAGConfig.from_dict({"tau": spelling}) == SPAGConfig(tau="calibrate")


def test_a_mutated_config_is_checked_before_it_is_written(tmp_path):
    """A field set after construction used to be written as NaN that from_json_file refuses."""
    path = tmp_path / "spag_config.json"
    SPAGConfig(tau=0.5).to_json_file(path)
    before = path.read_bytes()
    config = SPAGConfig(tau=0.5)
    config.tau = float("nan")
    with pytest.raises(ValueError, match="tau must be finite"):
        config.to_json_file(path)
    with pytest.raises(ValueError, match="tau must be finite"):
        config.to_dict()
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["paper", "authors_code"])
@pytest.mark.parametrize(
    "name, value, error, match",
    [
        ("tau", float("nan"), ValueError, "tau must be finite"),
        ("tau", "0.2", TypeError, "tau must be a number"),
        ("tau", -1.0, ValueError, "tau must be finite and >= 0"),
        ("rho", 0.0, ValueError, "rho must be finite and > 0"),
        ("trust_region", "huge", ValueError, "unknown trust_region"),
        ("skip_if_safe", 1, TypeError, "skip_if_safe must be True or False"),
        ("projection_iterations", 0, ValueError, "projection_iterations must be an int >= 1"),
    ],
)
def test_a_hyperparameter_set_on_the_optimizer_is_checked_at_once(mode, name, value, error, match):
    """``opt.tau = nan`` silently disabled the projection (NaN is never above tau), and a string
    tau failed only at the next step."""
    p = torch.ones(2, requires_grad=True)
    opt = spag_optim.make_spag(torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum(), mode=mode)
    before = getattr(opt, name)
    with pytest.raises(error, match=match):
        setattr(opt, name, value)
    assert getattr(opt, name) == before
    opt.tau = np.float32(0.75)
    assert opt.tau == 0.75 and type(opt.tau) is float


def test_a_rule_cannot_be_switched_by_setting_its_mode_or_repeating_the_authors_projection():
    p = torch.ones(2, requires_grad=True)
    opt = spag_optim.make_spag(torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum())
    with pytest.raises(ValueError, match="AuthorsCodeSPAG"):
        opt.mode = "authors_code"
    authors = spag_optim.make_spag(
        torch.optim.SGD([p], lr=0.1), lambda: (p**2).sum(), mode="authors_code"
    )
    with pytest.raises(ValueError, match="projection_iterations > 1"):
        authors.projection_iterations = 3
    assert (opt.mode, authors.projection_iterations) == ("paper", 1)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown SPAG hyper-parameter\(s\) \['lr'\]"):
        SPAGConfig.from_dict({"tau": 0.5, "lr": 1e-5})


def test_version_is_the_distributions():
    assert spag_optim.__version__ == importlib.metadata.version("spard")


def test_version_in_a_checkout_that_was_never_installed(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[metadata]\nname = spard\nversion = 9.8.7\n")
    monkeypatch.setattr(spard_version, "_SETUP_CFG", setup_cfg)
    assert spard_version.distribution_version() == "9.8.7"
    setup_cfg.write_text("[metadata]\nname = other\nversion = 1.0\n")
    assert spard_version.distribution_version() == "0+unknown"
    monkeypatch.setattr(spard_version, "_SETUP_CFG", tmp_path / "absent.cfg")
    assert spard_version.distribution_version() == "0+unknown"
