"""Turning a safe dataset into SPAG's safety closure in one line.

``make_safety_closure(model, SafetyBatches(safe_dataset, batch_size=8))`` gives the callable that
:class:`~spag_optim.SPAGOptimizer` evaluates after every step: it draws the next safe mini-batch
(cycling forever, reshuffled on every pass with a seed), moves it to the model's device and returns
the model's loss with its graph. Its position is part of the optimizer's state dict, so a resumed
run sees exactly the batches an uninterrupted one would. :meth:`SafetyBatches.from_pairs` builds the
batches from (harmful prompt, refusal) text pairs: the safety loss is then the refusal's negative
log-likelihood, as in the paper (see :mod:`spag_optim.safety_pairs`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ._caller_warning import warn_at_caller
from .safety_batches import SafetyBatches, move_to_device
from .safety_pairs import PaddingCollator, check_rows_fit
from .warnings import RefusalsNotProducedWarning

__all__ = [
    "SafetyBatches",
    "SafetyClosure",
    "make_safety_closure",
    "calibrate_tau",
    "model_loss",
    "move_to_device",
    "check_batches_fit_model",
    "measures_refusal_nll",
    "PRODUCED_NLL_MAX",
    "warn_refusals_not_produced",
]


LossFn = Callable[[torch.nn.Module, Any], Tensor]


def model_loss(model: torch.nn.Module, batch: Any) -> Tensor:
    """Hugging Face convention: the model returns an output with ``.loss`` given ``labels``."""
    output = model(**batch) if isinstance(batch, Mapping) else model(*batch)
    if isinstance(output, (tuple, list, Tensor)):  # which element is the loss cannot be known
        raise ValueError(
            f"the model returned a {type(output).__name__}, not an output with .loss: with a "
            "Hugging Face model do not pass return_dict=False; otherwise pass "
            "loss_fn=lambda model, batch: ... (the safety loss of the batch)"
        )
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        raise ValueError(
            "the model returned no loss for the safety batch: include 'labels' in the batch "
            "(Hugging Face models) or pass loss_fn=lambda model, batch: ..."
        )
    return loss


def _model_device(model: torch.nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


def _max_positions(model: torch.nn.Module) -> int | None:
    """The model's ``config.max_position_embeddings`` (through a DDP wrapper), None if it has none."""
    config = getattr(getattr(model, "module", model), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def check_batches_fit_model(model: torch.nn.Module, batches: Iterable[Any]) -> None:
    """Raise if a token row of ``batches`` (a :class:`SafetyBatches` over a list of
    ``{"input_ids": ...}`` rows, as :meth:`SafetyBatches.from_pairs` makes) is longer than the
    model's ``max_position_embeddings``: a learned-position model would fail with an IndexError
    deep in torch at the first step, a RoPE model would silently train at positions it never saw."""
    limit = _max_positions(model)
    if (
        limit is None
        or not isinstance(batches, SafetyBatches)
        or not isinstance(batches.data, list)
    ):
        return
    rows = batches.data
    if all(isinstance(row, Mapping) and isinstance(row.get("input_ids"), list) for row in rows):
        check_rows_fit(rows, limit, "the model's max_position_embeddings")


class SafetyClosure:
    """``() -> loss``: the next safe batch through ``model``; resumable through its state dict."""

    def __init__(
        self, model: torch.nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None
    ):
        check_batches_fit_model(model, batches)
        self.model = model
        self.batches = batches
        self._iterator = iter(batches)
        self._drawn = 0
        self.loss_fn = loss_fn or model_loss

    def __call__(self) -> Tensor:
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise ValueError(
                f"the safety batches ran out after {self._drawn} batches (a finite "
                f"{type(self.batches).__name__}); SPAG draws one per step, so the closure needs an "
                "endless source: pass SafetyBatches(safe_examples, batch_size=...) (it cycles, "
                "reshuffled every pass) or itertools.cycle(batches)"
            ) from None
        self._drawn += 1
        if getattr(self.batches, "device", None) is None:
            batch = move_to_device(batch, _model_device(self.model))
        return self.loss_fn(self.model, batch)

    def state_dict(self) -> dict[str, Any]:
        saver = getattr(self.batches, "state_dict", None)
        return {"batches": saver()} if callable(saver) else {}

    def check_state_dict(self, state: Any) -> None:
        """Raise, naming what is missing, if :meth:`load_state_dict` could not restore ``state``."""
        if not isinstance(state, Mapping):
            raise ValueError(
                f"the safety closure's state must be a dict, got {type(state).__name__}"
            )
        if callable(getattr(self.batches, "state_dict", None)) and "batches" not in state:
            raise ValueError(
                "the safety closure's state lacks 'batches' (the safe batches' position)"
            )
        checker = getattr(self.batches, "check_state_dict", None)
        if "batches" in state and callable(checker):
            checker(state["batches"])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.check_state_dict(state)
        loader = getattr(self.batches, "load_state_dict", None)
        if "batches" in state and callable(loader):
            loader(state["batches"])


def make_safety_closure(
    model: torch.nn.Module, batches: Iterable[Any], loss_fn: LossFn | None = None
) -> SafetyClosure:
    """The safety closure for :class:`~spag_optim.SPAGOptimizer`.

    ``batches`` is usually a :class:`SafetyBatches`; any endless iterable of batches works.
    ``loss_fn(model, batch)`` defaults to ``model(**batch).loss``. Call it with the model object
    whose parameters the optimizer updates (under DDP, see the README's Integrations section).
    """
    return SafetyClosure(model, batches, loss_fn)


#: Above this mean per-token NLL (nats) of the refusals, :func:`calibrate_tau` warns that the model
#: does not produce them: log 2, a geometric-mean token probability of 1/2 (see calibrate_tau).
PRODUCED_NLL_MAX = math.log(2.0)


@torch.no_grad()
def calibrate_tau(
    model: torch.nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    loss_fn: LossFn | None = None,
    *,
    loss_is_nll: bool | None = None,
) -> float:
    """Mean safety loss of ``model`` (before fine-tuning) over ``num_batches`` batches.

    The paper sets tau from the aligned model's safety loss (SPARD, Algorithm 1); SPAG then only
    acts once fine-tuning has pushed the loss above what alignment achieved. The model is put in
    eval mode for the measurement and restored afterwards. With an endless ``batches``
    (``SafetyBatches``) give ``num_batches`` (a positive int); a finite iterable is used whole
    when ``num_batches`` is None.

    A :class:`SafetyBatches` is measured from its current position and left where it was, so
    the batches training draws afterwards are the same with or without calibration.

    Warns (:class:`~spag_optim.warnings.RefusalsNotProducedWarning`) when the result is above :data:`PRODUCED_NLL_MAX` = log 2 and the loss
    is the refusals' mean per-token negative log-likelihood (``loss_is_nll``; by default
    :func:`measures_refusal_nll`: the model's own loss on :meth:`SafetyBatches.from_pairs`
    batches). The mean NLL is minus the log of the refusal tokens' geometric-mean probability: above
    log 2 the model gives them on average less than even odds, while a token with probability
    above 1/2 is the model's greedy choice whatever the rest of its distribution, so a model that
    says these refusals scores well below log 2. Measured on the demo's aligned model (48 pool
    prompts): 0.0008 on its own refusal, 11.1 on the same words shuffled; a user's aligned model on
    BeaverTails-style refusals it does not say gave 2.1-6.5. Above it the model does not produce
    these refusals, tau is high, and SPAG acts only after fine-tuning has made them less likely
    still. The mean can hide a mismatch confined to a few tokens of a long, predictable target
    (a benign answer as the demo's target: 0.68, no warning).
    """
    num_batches = _checked_num_batches(num_batches, batches)
    check_batches_fit_model(model, batches)
    tau = _mean_loss(model, batches, num_batches, loss_fn or model_loss)
    if loss_is_nll is None:
        loss_is_nll = measures_refusal_nll(batches, loss_fn)
    if loss_is_nll and tau > PRODUCED_NLL_MAX:
        warn_refusals_not_produced(tau)
    return tau


def measures_refusal_nll(batches: Iterable[Any], loss_fn: LossFn | None = None) -> bool:
    """Whether the safety loss is the refusals' mean per-token NLL: the model's own loss
    (``loss_fn`` None or the default) on token rows padded by
    :class:`~spag_optim.safety_pairs.PaddingCollator`, as :meth:`SafetyBatches.from_pairs` makes."""
    return (
        (loss_fn is None or loss_fn is model_loss)
        and isinstance(batches, SafetyBatches)
        and isinstance(batches.collate_fn, PaddingCollator)
    )


def _checked_num_batches(num_batches: Any, batches: Iterable[Any]) -> int | None:
    if num_batches is None:
        if isinstance(batches, SafetyBatches):
            raise ValueError("SafetyBatches never ends: pass num_batches (e.g. 8)")
        return None
    if (
        isinstance(num_batches, bool)
        or not isinstance(num_batches, numbers.Integral)
        or num_batches < 1
    ):
        raise ValueError(f"num_batches must be a positive int or None, got {num_batches!r}")
    return int(num_batches)


def _mean_loss(
    model: torch.nn.Module, batches: Iterable[Any], num_batches: int | None, loss_fn: LossFn
) -> float:
    """Mean of ``loss_fn`` over the batches, in eval mode, ``batches``' position kept."""
    device = None if getattr(batches, "device", None) is not None else _model_device(model)
    kept = (
        batches.kept_position() if isinstance(batches, SafetyBatches) else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with kept:
            for batch in batches:
                loss = loss_fn(model, move_to_device(batch, device))
                if loss is None:
                    raise TypeError(
                        "loss_fn returned None; it must return the safety loss (a "
                        "scalar tensor) of the batch"
                    )
                loss = float(loss)
                if not math.isfinite(loss):
                    raise ValueError(
                        f"the safety loss of batch {count} is {loss}; check the safe data"
                    )
                total += loss
                count += 1
                if num_batches is not None and count >= num_batches:
                    break
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("calibrate_tau got no batches")
    if num_batches is not None and count < num_batches:
        raise ValueError(
            f"calibrate_tau: num_batches={num_batches} but the batches ended after {count}; pass "
            f"num_batches={count}, or None to average over all of them"
        )
    return total / count


def warn_refusals_not_produced(tau: float) -> None:
    """Warn (:class:`~spag_optim.warnings.RefusalsNotProducedWarning`) that a refusal NLL of
    ``tau`` shows the model does not produce its safety targets, with the ways out."""
    warn_at_caller(
        f"calibrate_tau: the model's safety loss is {tau:.3g} nats per refusal token (geometric-mean "
        f"token probability {math.exp(-tau):.2g}, above log 2 = {PRODUCED_NLL_MAX:.3f}): the model "
        "does not produce these refusals, so with tau this high SPAG barely acts. Options: build the "
        "safety targets from the model's own refusals (spag_optim.model_refusals.refusals_from_model, "
        "then from_pairs); check that the prompt format (the chat template, or from_pairs' render=) "
        "is the one the model was aligned with; or, to teach these refusals, pass a lower tau "
        "yourself (the paper's 0.2). Pass loss_is_nll=False if the loss is not a per-token NLL",
        RefusalsNotProducedWarning,
    )
