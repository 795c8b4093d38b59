"""What the optimizer-shaped baselines share beyond SPAG's base: a step that runs their rule.

Each baseline (penalty, Lisa, SafeGrad) has SPAGOptimizer's constructor shape,
``Baseline(inner, safety_closure, **hyper_parameters)``, and is a
:class:`~spag_optim.safety_wrapper.SafetyClosureOptimizer` like SPAG, so schedulers, state dicts,
hooks, ``add_param_group`` and the safety closure's checks behave exactly as with SPAG.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from ..safety_wrapper import SafetyClosureOptimizer, check_number

__all__ = ["SafetyClosureBaseline", "check_number"]


class SafetyClosureBaseline(SafetyClosureOptimizer):
    """Base of the baselines: the utility closure, then the baseline's :meth:`_step`.

    Subclasses implement :meth:`_step` (the inner step plus their rule) and extend
    :meth:`_wrapper_state` / :meth:`_load_wrapper_state` with their own state, calling super.
    """

    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:  # type: ignore[override]
        """Optional utility ``closure`` (re-evaluates the loss and calls backward), then
        :meth:`_step`; returns the utility loss like torch optimizers do.

        Retry-safe: the rules evaluate the safety closure before the inner step, so a failure
        leaves the parameters and the inner optimizer untouched, and the closure's position is
        restored: calling ``step()`` again equals a step whose closure never failed.
        """
        utility_loss, params = self._utility_closure(closure)
        if params:
            with self._closure_rollback():
                self._step(params)
        else:
            self.last_stats = {}
            self._warn_frozen_once()
        self._num_steps += 1
        return utility_loss

    def _step(self, params: list[Tensor]) -> None:
        raise NotImplementedError
