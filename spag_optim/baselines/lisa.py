r"""Lisa: lazy safety alignment by bi-state optimization with a proximal term.

Huang et al. 2024, "Lisa: Lazy Safety Alignment for Large Language Models against Harmful
Fine-tuning Attack" (NeurIPS 2024). Fine-tuning alternates, by step counts, between

* an **alignment state** (``alignment_steps`` steps) on safe data, minimising
  :math:`L_{safe}(\theta) + \frac{\rho}{2}\lVert\theta - \tilde\theta_{ft}\rVert^2`, and
* a **fine-tuning state** (``finetune_steps`` steps) on the user's data, minimising
  :math:`L_{fit}(\theta) + \frac{\rho}{2}\lVert\theta - \tilde\theta_{al}\rVert^2`,

where :math:`\tilde\theta_{ft}` / :math:`\tilde\theta_{al}` are the parameters at the end of the
last fine-tuning / alignment state (both start as the initial parameters). The proximal term
keeps each state from drifting far from the other's consensus; its gradient is
:math:`\rho(\theta - \tilde\theta)`. Training starts in the alignment state, as the authors'
release does, and the cycle repeats.

As a drop-in optimizer: every :meth:`step` is one Lisa step. In the fine-tuning state it uses the
utility gradient the caller put in ``p.grad``; in the alignment state it *replaces* it with the
safety closure's gradient (the authors' trainer likewise swaps the user's batch for an alignment
batch). Check :attr:`LisaOptimizer.is_alignment_step` before the forward pass to skip computing a
utility gradient that would be discarded. One inner optimizer serves both states (its moments
are shared, as in the release). Memory: one copy of the parameters (the anchor).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..functional import global_sq_norm
from ..safety_wrapper import SafetyClosureOptimizer, check_number, ensure_grads

__all__ = ["LisaOptimizer"]

ALIGNMENT, FINETUNE = "alignment", "finetune"


class LisaOptimizer(SafetyClosureOptimizer):
    r"""Bi-state (alignment / fine-tuning) optimization with a proximal term.

    Args:
        inner: the optimizer that takes every step (e.g. ``torch.optim.AdamW``).
        safety_closure: ``() -> Tensor``, the alignment loss on a safe batch with its graph.
        alignment_steps: steps per alignment state (:math:`K_1`; the paper's setting is 100).
        finetune_steps: steps per fine-tuning state (:math:`K_2`; the paper's setting is 900).
        rho: proximal intensity :math:`\rho` (>= 0; the authors' scripts use 1 to 3).
        proximal_after: apply the proximal term only after this many steps (the release waits
            for 10% of training because it slowed early GSM8K convergence; default 0).
    """

    STATE_KEY = "lisa"
    COUNTERS = ("num_alignment_steps",)

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        safety_closure: Callable[[], Tensor],
        *,
        alignment_steps: int = 100,
        finetune_steps: int = 900,
        rho: float = 1.0,
        proximal_after: int = 0,
    ) -> None:
        super().__init__(inner, safety_closure)
        for name, value in (
            ("alignment_steps", alignment_steps),
            ("finetune_steps", finetune_steps),
            ("proximal_after", proximal_after),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if alignment_steps + finetune_steps == 0:
            raise ValueError("alignment_steps and finetune_steps cannot both be 0")
        self.alignment_steps = int(alignment_steps)
        self.finetune_steps = int(finetune_steps)
        self.rho = check_number("rho", rho, minimum=0.0)
        self.proximal_after = int(proximal_after)
        self._anchor: list[Tensor] = []
        self._anchor_params: list[Tensor] = []

    def _extra_repr(self) -> str:
        return (
            f"alignment_steps={self.alignment_steps}, finetune_steps={self.finetune_steps}, "
            f"rho={self.rho}, proximal_after={self.proximal_after}"
        )

    def _state_at(self, step: int) -> str:
        cycle = self.alignment_steps + self.finetune_steps
        return ALIGNMENT if step % cycle < self.alignment_steps else FINETUNE

    @property
    def is_alignment_step(self) -> bool:
        """Whether the next :meth:`step` is an alignment step (it ignores ``p.grad``)."""
        return self._state_at(self._num_steps) == ALIGNMENT

    @property
    def num_alignment_steps(self) -> int:
        """Steps taken in the alignment state (from the schedule, so exact after a resume)."""
        cycle = self.alignment_steps + self.finetune_steps
        full, rest = divmod(self._num_steps, cycle)
        return full * self.alignment_steps + min(rest, self.alignment_steps)

    def stats(self) -> dict[str, float]:
        """The shared :meth:`~spag_optim.SafetyClosureOptimizer.stats`, with the last step's state
        as ``alignment`` (1.0 in the alignment state, 0.0 in fine-tuning)."""
        out = super().stats()
        if "state" in self.last_stats:
            out["alignment"] = float(self.last_stats["state"] == ALIGNMENT)
        return out

    def _ensure_anchor(self, params: list[Tensor]) -> None:
        """Anchor = initial parameters on the first step; a new param group starts at itself."""
        known = {id(p) for p in self._anchor_params}
        with torch.no_grad():
            for p in params:
                if id(p) not in known:
                    self._anchor_params.append(p)
                    self._anchor.append(p.detach().clone())

    def _anchor_for(self, params: list[Tensor]) -> list[Tensor]:
        index = {id(p): i for i, p in enumerate(self._anchor_params)}
        return [self._anchor[index[id(p)]] for p in params]

    def _before_inner_step(self, params: list[Tensor]) -> None:
        self._ensure_anchor(params)
        state = self._state_at(self._num_steps)
        if self._num_steps > 0 and state != self._state_at(self._num_steps - 1):
            # Switching: the state just left ends here; its parameters anchor the new state.
            with torch.no_grad():
                torch._foreach_copy_(self._anchor_for(params), params)
        safety_loss = float("nan")
        if state == ALIGNMENT:
            loss = self._safety_loss()
            safety_loss = float(loss.detach())
            with torch.no_grad():  # the alignment state discards the utility gradient
                for p in params:
                    p.grad = None
            if not math.isfinite(safety_loss):
                # No gradient at all: the inner step leaves every parameter (and its state) as is.
                self._skip_nonfinite("loss", safety_loss)
                self.last_stats = {"state": state, "safety_loss": safety_loss, "proximal": 0.0}
                return
            torch.autograd.backward(loss, inputs=params)
        proximal = self.rho > 0 and self._num_steps >= self.proximal_after
        drift = 0.0
        if proximal:
            with torch.no_grad():
                diff = torch._foreach_sub(params, self._anchor_for(params))
                drift = float(global_sq_norm(diff, params[0].device))
                torch._foreach_add_(ensure_grads(params), diff, alpha=self.rho)
        self.last_stats = {
            "state": state,
            "safety_loss": safety_loss,
            "proximal": 0.5 * self.rho * drift if proximal else 0.0,
        }

    def _wrapper_state(self) -> dict[str, Any]:
        state = super()._wrapper_state()
        state["anchor"] = []
        if self._num_steps > 0:  # before the first step the anchor is not taken yet
            params = self.params()
            self._ensure_anchor(params)
            state["anchor"] = [a.detach().clone() for a in self._anchor_for(params)]
        return state

    def _check_wrapper_state(self, state: Any) -> None:
        super()._check_wrapper_state(state)
        params = self.params()
        anchor = state.get("anchor", [])
        if anchor and (
            len(anchor) != len(params)
            or any(not isinstance(a, Tensor) or a.shape != p.shape for a, p in zip(anchor, params))
        ):
            raise ValueError(
                f"the checkpoint's Lisa anchor ({len(anchor)} tensors) does not match the "
                f"optimizer's {len(params)} parameters; load it into an optimizer over the same "
                "parameters. Nothing was loaded"
            )

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        super()._load_wrapper_state(state)
        params = self.params()
        anchor = state.get("anchor", [])
        self._anchor_params = list(params) if anchor else []
        self._anchor = [
            a.to(device=p.device, dtype=p.dtype).clone() for a, p in zip(anchor, params)
        ]
