"""Literal float64 references of the baselines' update rules (for the tests only).

Each works on flat float64 vectors with plain Python arithmetic, transcribing the published rule
line by line; the inner optimizer is a separate torch optimizer over a copy of the model, handed
the gradient the rule produces.
"""

from __future__ import annotations

import torch


def flat(tensors) -> list[float]:
    return [float(x) for t in tensors for x in t.detach().reshape(-1).to(torch.float64)]


def set_grads(params, values: list[float]) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = torch.tensor(values[offset : offset + n], dtype=p.dtype).view_as(p)
        offset += n


def grad_of(loss_fn, params) -> tuple[float, list[float]]:
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return float(loss.detach()), flat(grads)


def reference_penalty_step(params, inner, utility_fn, safety_fn, *, lam, tau) -> bool:
    """grad = g_fit + lam * g_safe if L_safe > tau else g_fit; then the inner step."""
    _, g_fit = grad_of(utility_fn, params)
    loss, g_safe = grad_of(safety_fn, params)
    active = loss > tau
    grad = [u + lam * s for u, s in zip(g_fit, g_safe)] if active else g_fit
    set_grads(params, grad)
    inner.step()
    return active


def reference_safegrad_step(params, inner, utility_fn, safety_fn) -> bool:
    """If <g_u, g_s> < 0: g_u -= <g_u, g_s> / ||g_s||^2 * g_s; then the inner step."""
    _, g_u = grad_of(utility_fn, params)
    _, g_s = grad_of(safety_fn, params)
    dot = sum(u * s for u, s in zip(g_u, g_s))
    sq = sum(s * s for s in g_s)
    conflict = dot < 0 and sq > 0
    if conflict:
        g_u = [u - dot / sq * s for u, s in zip(g_u, g_s)]
    set_grads(params, g_u)
    inner.step()
    return conflict


class ReferenceLisa:
    """The authors' bi-state loop: a status, a clock, and one checkpoint per state.

    Starts in the alignment state; after ``alignment_step`` steps it switches to fine-tuning
    (saving the alignment checkpoint), after ``finetune_step`` steps back (saving the fine-tuning
    checkpoint). Alignment steps use grad(L_safe) + rho * (theta - finetune_ckpt); fine-tuning
    steps grad(L_fit) + rho * (theta - alignment_ckpt).
    """

    def __init__(self, params, inner, *, alignment_step, finetune_step, rho, proximal_after=0):
        self.params, self.inner = params, inner
        self.alignment_step, self.finetune_step = alignment_step, finetune_step
        self.rho, self.proximal_after = rho, proximal_after
        self.status = "alignment" if alignment_step > 0 else "finetune"
        self.alignment_ckpt = flat(params)
        self.finetune_ckpt = flat(params)
        self.clock = 0
        self.steps = 0

    def step(self, utility_fn, safety_fn) -> str:
        if self.status == "alignment" and self.clock == self.alignment_step and self.finetune_step:
            self.status, self.clock = "finetune", 0
            self.alignment_ckpt = flat(self.params)
        elif self.status == "finetune" and self.clock == self.finetune_step and self.alignment_step:
            self.status, self.clock = "alignment", 0
            self.finetune_ckpt = flat(self.params)
        if self.status == "alignment":
            _, grad = grad_of(safety_fn, self.params)
            anchor = self.finetune_ckpt
        else:
            _, grad = grad_of(utility_fn, self.params)
            anchor = self.alignment_ckpt
        if self.rho > 0 and self.steps >= self.proximal_after:
            theta = flat(self.params)
            grad = [g + self.rho * (t - a) for g, t, a in zip(grad, theta, anchor)]
        set_grads(self.params, grad)
        self.inner.step()
        self.steps += 1
        self.clock += 1
        return self.status
