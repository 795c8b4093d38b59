"""SPAGConfig: SPAG's hyper-parameters as a config object to save with a run.

Peft and TRL users keep a run's settings in a config (``LoraConfig``, ``SFTConfig``);
:class:`SPAGConfig` is that for SPAG (:func:`~spag_optim.make_spag` builds the rule its ``mode``
names; SPARD, ICML 2026,
Algorithm 1: tau, the trust region eta_safe and its ratio rho, ...). It is thin: its fields are the
optimizer's hyper-parameters with the optimizer's defaults, checked by the optimizer's own
validation, and it round-trips through a dict and a JSON file::

    config = SPAGConfig(tau=0.8, rho=1.0)
    optimizer = make_spag(torch.optim.AdamW(model.parameters()), safety, **config.to_dict())
    config.to_json_file("run/spag_config.json")

``tau="calibrate"`` (in any case) is accepted for :class:`~spag_optim.integrations.trainer.SPAGTrainer`, which
replaces it with the aligned model's safety loss before training; a plain ``SPAGOptimizer`` needs
a number (use :func:`spag_optim.calibrate_tau`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from spard_io import write_atomic

from .distributed import check_distributed_mode
from .hyperparameters import check_hyperparameters

__all__ = ["CALIBRATE", "SPAGConfig", "is_calibrate"]

#: The ``tau`` that asks the trainer to calibrate tau on the aligned model before training.
CALIBRATE = "calibrate"


def is_calibrate(tau: Any) -> bool:
    """Whether ``tau`` is :data:`CALIBRATE`, in any case and with spaces around it allowed."""
    return isinstance(tau, str) and tau.strip().lower() == CALIBRATE


@dataclasses.dataclass
class SPAGConfig:
    """:class:`~spag_optim.SPAGOptimizer`'s keyword arguments that describe the run (not the
    process group or the ``GradScaler``, which are objects of the running process). See
    :class:`~spag_optim.SPAGOptimizer` for each field; ``tau`` may also be ``"calibrate"``.
    Invalid values raise at construction, with the optimizer's own messages."""

    tau: float | str = 0.2
    trust_region: float | str | None = "relative"
    rho: float = 1.0
    mode: str = "paper"
    tolerance: float = 0.0
    alpha_max: float = 1.0
    eps: float = 1e-8
    skip_if_safe: bool = True
    projection_iterations: int = 1
    distributed: str | None = "auto"

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_distributed_mode(values.pop("distributed"))
        calibrate = is_calibrate(values["tau"])
        if calibrate:
            values["tau"] = 0.0  # a placeholder, so that the other values are checked
        elif isinstance(values["tau"], str):
            raise TypeError(f"tau must be a number or {CALIBRATE!r}, got {values['tau']!r}")
        for name, value in check_hyperparameters(**values).items():  # plain Python values
            setattr(self, name, CALIBRATE if calibrate and name == "tau" else value)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict: ``SPAGOptimizer(inner, closure, **config.to_dict())``. Checked
        again first: a field may have been set since construction."""
        return dataclasses.asdict(dataclasses.replace(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SPAGConfig:
        """The config from :meth:`to_dict`'s dict (or any subset of the fields)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"SPAGConfig.from_dict takes a dict, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown SPAG hyper-parameter(s) {unknown}; the fields are "
                f"{sorted(names)} (process_group and grad_scaler are not config)"
            )
        return cls(**values)

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config as JSON to ``path``, atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> SPAGConfig:
        """The config :meth:`to_json_file` wrote."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
