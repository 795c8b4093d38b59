"""Literal float64 reference implementations of SPAG's two modes (for the tests only).

Each works on one flat float64 vector and plain Python arithmetic, transcribing the issue's
description line by line, so that a bug in the optimised foreach code cannot hide in here.
"""

from __future__ import annotations

import math

import torch


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])


def unflatten_into(vector: torch.Tensor, tensors) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(vector[offset : offset + n].view_as(t))
            offset += n


def safety_loss_and_grad(params, safety_loss_fn):
    loss = safety_loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return float(loss.detach()), grads


def reference_paper_step(params, inner, safety_loss_fn, *, tau, trust_region, rho, lr=None):
    """The four steps of the issue: inner step, safety loss, keep if safe, else project."""
    theta = flat(params)
    inner.step()  # 1. utility step -> theta+
    theta_plus = flat(params)
    loss, grads = safety_loss_and_grad(params, safety_loss_fn)  # 2.
    if not loss > tau:  # 3.
        return False, 0.0
    g = flat(grads)
    g_sq = sum(float(x) * float(x) for x in g)
    if g_sq == 0.0:
        return False, 0.0
    alpha = (loss - tau) / g_sq  # 4.
    if trust_region == "relative":
        step_norm = math.sqrt(sum(float(x) ** 2 for x in (theta_plus - theta)))
        alpha = min(alpha, rho * step_norm / math.sqrt(g_sq))
    elif trust_region == "lr":
        alpha = min(alpha, lr)
    elif trust_region is not None:
        alpha = min(alpha, trust_region)
    unflatten_into(theta_plus - alpha * g, params)
    return True, alpha


def reference_authors_code_step(params, inner, safety_loss_fn, *, tau, tolerance, alpha_max):
    """The released code: trigger above tau + tolerance, per-tensor scaling by
    min((loss - tau) / ||g_p||, alpha_max), then the inner optimizer steps on it (eps = 0)."""
    inner.step()
    loss, grads = safety_loss_and_grad(params, safety_loss_fn)
    if not loss > tau + tolerance:
        return False
    for p, g in zip(params, grads):
        norm = math.sqrt(sum(float(x) ** 2 for x in g.reshape(-1)))
        factor = alpha_max if norm == 0.0 else min((loss - tau) / norm, alpha_max)
        p.grad = g * factor
    inner.step()
    return True


def reference_repeated_step(params, inner, safety_loss_fn, *, tau, trust_region, rho, iterations):
    """The repeated rule: the inner step, then up to ``iterations`` projections of Eq. 4, each
    from the point the previous one reached, each capped by this step's trust region, stopping
    once the loss is at most tau. Returns the first projection's alpha (0.0 if none)."""
    theta = flat(params)
    inner.step()
    theta_plus = flat(params)
    step_norm = math.sqrt(sum(float(x) ** 2 for x in (theta_plus - theta)))
    current = theta_plus
    first_alpha = 0.0
    for k in range(iterations):
        loss, grads = safety_loss_and_grad(params, safety_loss_fn)
        if not loss > tau:
            break
        g = flat(grads)
        g_sq = sum(float(x) * float(x) for x in g)
        if g_sq == 0.0:
            break
        alpha = (loss - tau) / g_sq
        if trust_region == "relative":
            alpha = min(alpha, rho * step_norm / math.sqrt(g_sq))
        elif trust_region is not None:
            alpha = min(alpha, trust_region)
        current = current - alpha * g
        unflatten_into(current, params)
        first_alpha = alpha if k == 0 else first_alpha
    return first_alpha
