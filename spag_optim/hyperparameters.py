r"""SPAG's hyper-parameters: checked once, saved with the checkpoint, and sanity-checked in use.

* :func:`check_hyperparameters` validates and normalises the constructor's values (numpy numbers
  are numbers, ``True`` is not).
* They are saved in the ``"spag"`` entry of ``SPAGOptimizer.state_dict()``; loading a checkpoint
  restores them, so a resumed run keeps the ``tau`` it was calibrated with, and warns about every
  value that differs from the one the optimizer was constructed with (:func:`restore`).
* :class:`TauCheck` warns once when tau looks too low for the model: in SPARD (Algorithm 1) tau is
  the aligned model's safety loss, so the projection should fire only once fine-tuning has pushed
  the loss above it. If instead each of the first :data:`FIRST_STEPS` steps projects with a loss
  *far* above tau, at least twice tau and at least :data:`MIN_EXCESS` above it, tau was almost
  certainly not calibrated for this model (e.g. the paper's 0.2 on a model whose refusal loss is 3):
  every step then projects, and the run trades utility for a target the model never met. The
  check reads the loss on the host, so with ``skip_if_safe=False`` (the sync-free path) it is off.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from ._caller_warning import warn_at_caller
from .safety_wrapper import check_bool, check_number
from .warnings import ReplacedHyperparameterWarning, TauTooLowWarning

__all__ = [
    "FIRST_STEPS",
    "HYPERPARAMETERS",
    "Hyperparameter",
    "MIN_EXCESS",
    "MODES",
    "RULES",
    "TauCheck",
    "check_hyperparameters",
    "check_mode",
    "checked_hyperparameters",
    "checked_saved",
    "hyperparameters_of",
    "restore",
]

MODES = ("paper", "authors_code")
#: The class that implements each mode (by name: the classes import this module).
RULES = {"paper": "SPAGOptimizer", "authors_code": "AuthorsCodeSPAG"}
#: What the ``"spag"`` checkpoint entry saves under ``"hyperparameters"``.
HYPERPARAMETERS = (
    "tau",
    "trust_region",
    "rho",
    "mode",
    "tolerance",
    "alpha_max",
    "eps",
    "skip_if_safe",
    "projection_iterations",
)
#: Steps at the start of training that :class:`TauCheck` looks at.
FIRST_STEPS = 10
#: A loss is "far above" tau when it is >= 2 tau and >= tau + MIN_EXCESS (nats).
MIN_EXCESS = 0.5


def check_hyperparameters(
    *,
    tau: Any,
    trust_region: Any,
    rho: Any,
    mode: Any,
    tolerance: Any,
    alpha_max: Any,
    eps: Any,
    skip_if_safe: Any,
    projection_iterations: Any = 1,
) -> dict[str, Any]:
    """The hyper-parameters as plain Python values, or a clear error naming the bad one."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if isinstance(trust_region, str):
        if trust_region not in ("lr", "relative"):
            raise ValueError(
                f"unknown trust_region {trust_region!r}; pass a positive float (eta_safe), "
                "None (no cap), 'lr' or 'relative'"
            )
        trust_region = str(trust_region)
    elif trust_region is not None:
        trust_region = check_number("trust_region", trust_region, minimum=0.0, strict=True)
    if (
        isinstance(projection_iterations, bool)
        or not isinstance(projection_iterations, numbers.Integral)
        or projection_iterations < 1
    ):
        raise ValueError(
            f"projection_iterations must be an int >= 1 (1: the paper's single "
            f"projection), got {projection_iterations!r}"
        )
    if projection_iterations > 1 and mode != "paper":
        raise ValueError(
            "projection_iterations > 1 repeats the paper's projection (Eq. 4); "
            "mode='authors_code' has no such rule: use mode='paper' or leave it at 1"
        )
    return {
        "tau": check_number("tau", tau, minimum=0.0),
        "trust_region": trust_region,
        "rho": check_number("rho", rho, minimum=0.0, strict=True),
        "mode": str(mode),
        "tolerance": check_number("tolerance", tolerance, minimum=0.0),
        "alpha_max": check_number("alpha_max", alpha_max, minimum=0.0, strict=True),
        "eps": check_number("eps", eps, minimum=0.0),
        "skip_if_safe": check_bool("skip_if_safe", skip_if_safe),
        "projection_iterations": int(projection_iterations),
    }


def check_mode(mode: Any, implemented: str) -> None:
    """A clear error, naming the class to use, when ``mode`` is the other rule's.

    Each rule is its own class; :func:`spag_optim.make_spag` picks the class from ``mode``.
    """
    if mode != implemented and mode in MODES:
        raise ValueError(
            f"{RULES[implemented]} implements mode={implemented!r}; for mode={mode!r} construct "
            f"spag_optim.{RULES[mode]}(inner, safety_closure, ...) or "
            f"spag_optim.make_spag(inner, safety_closure, mode={mode!r}, ...)"
        )


class Hyperparameter:
    """One hyper-parameter attribute of a SPAG optimizer, checked with the others whenever it is
    set after construction: ``optimizer.tau = float("nan")`` would silently disable the projection
    (no loss is above NaN), and a string tau would fail only at the next step. The rule's ``mode``
    cannot be switched (an optimizer never changes its class)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:  # not set yet (during construction): what getattr(..., default) expects
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        stored = obj.__dict__
        if all(name in stored for name in HYPERPARAMETERS):  # constructed: check with the others
            current = {name: stored[name] for name in HYPERPARAMETERS}
            if self.name == "mode":
                check_mode(value, current["mode"])
            value = check_hyperparameters(**{**current, self.name: value})[self.name]
        stored[self.name] = value


def checked_hyperparameters(cls: type) -> type:
    """Class decorator: the :data:`HYPERPARAMETERS` of a SPAG rule become :class:`Hyperparameter`
    attributes (a decorator, not a base class: each rule stays one class over the step template)."""
    for name in HYPERPARAMETERS:
        attribute = Hyperparameter()
        attribute.__set_name__(cls, name)
        setattr(cls, name, attribute)
    return cls


def hyperparameters_of(optimizer: Any) -> dict[str, Any]:
    """The :data:`HYPERPARAMETERS` of a SPAG optimizer, by name."""
    return {name: getattr(optimizer, name) for name in HYPERPARAMETERS}


def checked_saved(current: Mapping[str, Any], saved: Any) -> dict[str, Any]:
    """``current`` updated with the checkpoint's ``saved`` values, all checked (raises if bad,
    or if they are the other rule's: an optimizer never changes its class)."""
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"the checkpoint's SPAG hyper-parameters are a {type(saved).__name__}, "
            "not a dict; nothing was loaded"
        )
    merged = {**current, **{k: v for k, v in saved.items() if k in current}}
    try:
        checked = check_hyperparameters(**merged)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the checkpoint's SPAG hyper-parameters are invalid ({error}); nothing was loaded"
        ) from None
    mode = checked["mode"]
    if mode != current["mode"]:
        raise ValueError(
            f"the checkpoint was saved by {RULES[mode]} (mode={mode!r}), this optimizer is a "
            f"{RULES[current['mode']]} (mode={current['mode']!r}); build the optimizer of the "
            "checkpoint's rule with spag_optim.make_spag(inner, safety_closure, "
            "mode=checkpoint['spag']['hyperparameters']['mode'], ...) and load it there. Nothing "
            "was loaded"
        )
    return checked


def restore(current: Mapping[str, Any], saved: Any) -> dict[str, Any]:
    """The checkpoint's values (checked), warning about each that differs from ``current``."""
    loaded = checked_saved(current, saved)
    changed = [
        f"{k}={loaded[k]!r} (constructed with {current[k]!r})"
        for k in loaded
        if loaded[k] != current[k]
    ]
    if changed:
        warn_at_caller(
            "SPAGOptimizer.load_state_dict: the checkpoint's hyper-parameters replace the "
            f"constructed ones: {', '.join(changed)}. Set them on the optimizer after loading to "
            "use other values",
            ReplacedHyperparameterWarning,
        )
    return loaded


class TauCheck:
    """Warn once if each of the first :data:`FIRST_STEPS` steps projects far above tau."""

    def __init__(self) -> None:
        self.far_steps = 0
        self.last_step = 0
        self.done = False

    def observe(self, step: int, loss: float, tau: float, projected: bool) -> None:
        """Record step number ``step`` (1-based, counted from the start of training; a retried
        step is recorded once)."""
        if self.done or step > FIRST_STEPS:
            self.done = True
            return
        if step == self.last_step:
            return
        self.last_step = step
        if not (projected and loss >= 2 * tau and loss >= tau + MIN_EXCESS):
            self.done = True
            return
        self.far_steps += 1
        if self.far_steps == FIRST_STEPS:
            self.done = True
            warn_at_caller(
                f"SPAG: each of the first {FIRST_STEPS} steps projected with a safety loss far "
                f"above tau={tau:g} (last: {loss:.4g}); tau may be too low for this model, so "
                "every step projects: see spag_optim.calibrate_tau (tau = the aligned model's "
                "safety loss)",
                TauTooLowWarning,
            )
