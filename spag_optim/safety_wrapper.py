"""What every defense built from an inner optimizer and a safety closure shares.

SPAG and the optimizer-shaped baselines (penalty, Lisa, SafeGrad) all take
``Defense(inner, safety_closure, **hyper_parameters)``. This base owns the step that they all take,
so that each defense implements only its rule:

1. the optional utility ``closure`` (it calls backward), and the gradients checked;
2. :meth:`~SafetyClosureOptimizer._before_inner_step`: the rule's part before the inner step
   (the baselines evaluate the safety loss here and edit ``p.grad``; SPAG keeps a snapshot);
3. ``inner.step()``;
4. :meth:`~SafetyClosureOptimizer._after_inner_step`: the rule's part after it (SPAG's
   projection).

It holds the closure, checks what it returns (a scalar loss with a graph, or a clear error), counts
steps, and saves the closure's position (a :class:`~spag_optim.SafetyClosure` over
:class:`~spag_optim.SafetyBatches`) in the state dict so that a resumed run draws the same safe
batches. It is also the one home of what the rules share: the zero-filled safety gradient
(:meth:`~SafetyClosureOptimizer._safety_grads`, :func:`ensure_grads`), the
non-finite skip that counts and warns (:meth:`~SafetyClosureOptimizer._skip_nonfinite`) and the
:meth:`~SafetyClosureOptimizer.stats` every defense reports.

Failures leave the defense retryable: parameters whose input no step can handle (complex dtypes,
sparse gradients) are refused before anything moves; when the safety part of a step fails (the
closure raises, returns something that is not a loss, runs out of memory), the closure's position
is restored, so that calling ``step()`` again draws the same safe batch. A failure before the
inner step leaves the parameters and the inner optimizer untouched; one after it leaves the step
pending, and the next ``step()`` completes only the part after the inner step. A checkpoint is
checked whole before anything is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ._caller_warning import warn_at_caller
from .warnings import FrozenParametersWarning, NonFiniteWarning
from .wrapper import OptimizerWrapper

__all__ = ["SafetyClosureOptimizer", "check_bool", "check_number", "ensure_grads"]

logger = logging.getLogger(__name__)


def check_number(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    """``value`` as a float, or a clear error when it is not a finite number above ``minimum``.

    Python and numpy numbers are accepted (``np.float32(0.2)``); ``True``/``False`` are not numbers.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a clear error (``bool("no")`` would silently be True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def ensure_grads(params: list[Tensor]) -> list[Tensor]:
    """``p.grad`` of every parameter, a zero tensor put in where it is None (a parameter the
    loss does not reach has a zero gradient component)."""
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    return [p.grad for p in params]  # type: ignore[misc]


def _check_dtypes(params: Any) -> None:
    for p in params:
        if isinstance(p, Tensor) and p.is_complex():
            raise TypeError(
                f"a parameter of shape {tuple(p.shape)} is complex ({p.dtype}); the safety step "
                "is defined for real parameters: optimize its real and imaginary parts as two "
                "real tensors (torch.view_as_real)"
            )


class SafetyClosureOptimizer(OptimizerWrapper):
    """An :class:`OptimizerWrapper` that evaluates ``safety_closure`` inside its step."""

    #: Keys the wrapper's own checkpoint entry must hold (subclasses add theirs).
    STATE_FIELDS: tuple[str, ...] = ("num_steps", "num_nonfinite")

    def __init__(self, inner: torch.optim.Optimizer, safety_closure: Callable[[], Tensor]) -> None:
        super().__init__(inner)
        if not callable(safety_closure):
            raise TypeError(
                "safety_closure must be a callable returning the safety loss tensor, e.g. "
                "spag_optim.make_safety_closure(model, SafetyBatches(safe_dataset))"
            )
        _check_dtypes(p for group in inner.param_groups for p in group["params"])
        self.safety_closure = safety_closure
        self.last_stats: dict[str, Any] = {}
        self._num_steps = 0
        self._num_nonfinite = 0
        self._warned_frozen = False
        # A step whose part after the inner step failed: (utility loss, what the part before
        # returned). The next step() completes it instead of stepping again.
        self._pending: tuple[Tensor | None, Any] | None = None

    def _warn_frozen_once(self) -> None:
        """Every parameter is frozen: the safety closure is not run (its loss has no graph)."""
        if not self._warned_frozen:
            self._warned_frozen = True
            warn_at_caller(
                f"{type(self).__name__}: no parameter of this optimizer requires grad "
                "(all frozen); the safety step has nothing to act on",
                FrozenParametersWarning,
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        _check_dtypes([params] if isinstance(params, Tensor) else list(params))
        super().add_param_group(param_group)

    @property
    def num_steps(self) -> int:
        """Optimizer steps taken through this wrapper."""
        return self._num_steps

    @property
    def num_nonfinite(self) -> int:
        """Steps whose safety loss or gradient was NaN/inf (their safety part was skipped)."""
        return self._num_nonfinite

    #: The method's own name for :attr:`num_interventions` (None: it never intervenes on a loss).
    INTERVENTIONS: str | None = None
    #: The method's counters, by name, that :meth:`stats` reports.
    COUNTERS: tuple[str, ...] = ()

    @property
    def num_interventions(self) -> int:
        """Steps on which the safety loss changed the update (SPAG: projected; penalty: hinge
        active; SafeGrad: conflicting gradient projected; Lisa: 0, its alignment steps follow a
        schedule). Saved in the checkpoint, so it continues after a resume."""
        return 0 if self.INTERVENTIONS is None else int(getattr(self, self.INTERVENTIONS))

    def stats(self) -> dict[str, float]:
        """Python floats, the same keys on every defense plus each method's own: ``num_steps``,
        ``num_nonfinite``, ``num_interventions``, the :attr:`COUNTERS` under their own names, and
        the last step's numeric ``last_stats`` (booleans as 0.0/1.0). Reads device values back,
        once: call it when you log, not in the hot loop."""
        out = {
            "num_steps": float(self._num_steps),
            "num_nonfinite": float(self.num_nonfinite),
            "num_interventions": float(self.num_interventions),
        }
        out.update((name, float(getattr(self, name))) for name in self.COUNTERS)
        numeric = {
            k: v for k, v in self.last_stats.items() if isinstance(v, (Tensor, numbers.Real))
        }
        tensors = [
            v.detach().reshape(()).double() for v in numeric.values() if isinstance(v, Tensor)
        ]
        values = iter(
            torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else []
        )
        out.update(
            (k, next(values) if isinstance(v, Tensor) else float(v)) for k, v in numeric.items()
        )
        return out

    #: The name that starts the defense's warnings (None: the class name).
    WARN_NAME: str | None = None

    def _skip_nonfinite(
        self, what: str, value: object, consequence: str = "its part of this step was skipped"
    ) -> None:
        """Count and warn (at the caller's ``step()`` line) about a NaN/inf safety ``what`` (loss,
        gradient...); the caller skips its safety part."""
        self._num_nonfinite += 1
        warn_at_caller(
            f"{self.WARN_NAME or type(self).__name__}: the safety {what} is {value}; {consequence}",
            NonFiniteWarning,
        )

    def _safety_grads(self, loss: Tensor, params: list[Tensor]) -> list[Tensor]:
        """The gradient of the safety ``loss`` for each of ``params`` (``p.grad`` untouched),
        zeros for a parameter the loss does not reach."""
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    # -- the step ---------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Optional utility ``closure`` (re-evaluates the loss and calls backward), the rule's part
        before the inner step, the inner step, then the rule's part after it; returns the utility
        loss like torch optimizers do. The safety loss comes from ``safety_closure``.

        Retry-safe: if the safety part fails before the inner step, nothing has moved and calling
        ``step()`` again equals a step whose closure never failed. If it fails after the inner
        step, the next ``step()`` call only completes that part (``closure`` and ``p.grad`` are
        then not used). Either way the closure's position is restored, so the retry draws the same
        safe batch. Sparse gradients are refused before anything moves.
        """
        if self._pending is None:
            utility_loss, params = self._utility_closure(closure)
            prepared = None
            with self._closure_rollback():
                if params:
                    prepared = self._before_inner_step(params)
                self.inner.step()
            self._num_steps += 1
            self._pending = (utility_loss, prepared)
        else:
            logger.info(
                "%s: completing the step whose safety part failed (the part after the inner "
                "step only)",
                self.WARN_NAME or type(self).__name__,
            )
        utility_loss, prepared = self._pending
        params = self.params()
        if params:
            with self._closure_rollback():
                self._after_inner_step(params, prepared)
        else:
            self.last_stats = self._frozen_stats()
            self._warn_frozen_once()
        self._pending = None
        return utility_loss

    def _before_inner_step(self, params: list[Tensor]) -> Any:
        """The rule's part before ``inner.step()`` (``params`` non-empty, ``p.grad`` holding the
        utility gradient); what it returns is passed to :meth:`_after_inner_step`, also on a
        retry. A failure here leaves the parameters and the inner optimizer untouched."""
        return None

    def _after_inner_step(self, params: list[Tensor], prepared: Any) -> None:
        """The rule's part after ``inner.step()`` (``params`` non-empty)."""

    def _frozen_stats(self) -> dict[str, Any]:
        """``last_stats`` of a step on which every parameter is frozen (nothing to act on)."""
        return {}

    def _utility_closure(
        self, closure: Callable[[], Tensor] | None
    ) -> tuple[Tensor | None, list[Tensor]]:
        """Run torch's optional utility ``closure`` (it calls backward), then return its loss and
        the parameters, their gradients checked (:meth:`_check_grads`)."""
        utility_loss = None
        if closure is not None:
            with torch.enable_grad():
                utility_loss = closure()
        params = self.params()
        self._check_grads(params)
        return utility_loss, params

    def _check_grads(self, params: list[Tensor]) -> None:
        """Refuse, before the step moves anything, gradients the safety step cannot combine."""
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(
                    f"the parameter of shape {tuple(p.shape)} has a sparse gradient (e.g. "
                    "nn.Embedding(sparse=True)); the safety step needs dense gradients: build the "
                    "module with sparse=False"
                )

    @contextlib.contextmanager
    def _closure_rollback(self) -> Iterator[None]:
        """On an exception, put the safety closure back where it was (same batch on a retry)."""
        saver = getattr(self.safety_closure, "state_dict", None)
        saved = saver() if callable(saver) else None
        try:
            yield
        except BaseException:
            if saved is not None:
                self.safety_closure.load_state_dict(saved)  # type: ignore[attr-defined]
            raise

    def _safety_loss(self) -> Tensor:
        """The closure's loss at the current parameters, checked, as a 0-dim tensor."""
        with torch.enable_grad():
            loss = self.safety_closure()
        if loss is None:
            raise TypeError(
                "safety_closure returned None; it must return the safety loss tensor (and must not "
                "call backward itself: the optimizer differentiates it)"
            )
        if not isinstance(loss, Tensor):
            raise TypeError(f"safety_closure must return a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"safety_closure must return a scalar loss, got shape {tuple(loss.shape)}; "
                "reduce it (e.g. .mean())"
            )
        if loss.grad_fn is None:
            raise ValueError(
                "the safety loss has no grad_fn: compute it with gradients enabled from the "
                "parameters being optimized (not under torch.no_grad(), not .detach()ed)"
            )
        return loss.reshape(())

    # -- state dict -------------------------------------------------------------------------------
    def _wrapper_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"num_steps": self._num_steps, "num_nonfinite": self.num_nonfinite}
        saver = getattr(self.safety_closure, "state_dict", None)
        if callable(saver):
            state["safety_closure"] = saver()
        return state

    def _check_wrapper_state(self, state: Any) -> None:
        name, key = type(self).__name__, self.STATE_KEY
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{name}.load_state_dict: the checkpoint's {key!r} entry is a "
                f"{type(state).__name__}, not a dict; nothing was loaded"
            )
        missing = [field for field in self.STATE_FIELDS if field not in state]
        if missing:
            raise ValueError(
                f"{name}.load_state_dict: the checkpoint's {key!r} entry lacks {missing}; nothing "
                "was loaded (was it saved by another defense or an incomplete save?)"
            )
        for field in self.STATE_FIELDS:
            value = state[field]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(
                    f"{name}.load_state_dict: the checkpoint's {key!r} entry has {field}="
                    f"{value!r}, not a count (an int >= 0); nothing was loaded (was it edited?)"
                )
        saver = getattr(self.safety_closure, "state_dict", None)
        loader = getattr(self.safety_closure, "load_state_dict", None)
        if "safety_closure" in state and not callable(loader):
            raise ValueError(
                "the checkpoint holds the safety closure's position but this safety_closure "
                "has no load_state_dict; build it with spag_optim.make_safety_closure. Nothing was "
                "loaded"
            )
        if "safety_closure" not in state and callable(saver) and saver():
            raise ValueError(
                f"{name}.load_state_dict: the checkpoint's {key!r} entry lacks 'safety_closure' (the "
                "safe batches' position; it was saved with a closure that has no state_dict), so the "
                "resumed run could not draw the batches an uninterrupted one would. Nothing was "
                f"loaded; to start the batches where they are, set checkpoint[{key!r}]"
                "['safety_closure'] = optimizer.safety_closure.state_dict()"
            )
        checker = getattr(self.safety_closure, "check_state_dict", None)
        if "safety_closure" in state and callable(checker):
            checker(state["safety_closure"])

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        self._pending = None
        self._num_steps = int(state["num_steps"])
        self._num_nonfinite = int(state["num_nonfinite"])
        if "safety_closure" in state:
            self.safety_closure.load_state_dict(state["safety_closure"])  # type: ignore[attr-defined]
