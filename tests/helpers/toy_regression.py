"""The float64 toy regression the optimizer tests share: a small MLP, utility and safety batches
whose tasks pull against each other, the loss. In the multi-process tests every rank builds the
same model and the same global data, then takes its own rows, so one process on all rows is the
reference."""

from __future__ import annotations

import torch


def toy_mlp(hidden: int = 8, generator: torch.Generator | None = None) -> torch.nn.Module:
    """``Linear(5, hidden) -> Tanh -> Linear(hidden, 1)`` in float64, weights N(0, 0.25) drawn from
    ``generator`` (default: a fresh one seeded 0)."""
    g = torch.Generator().manual_seed(0) if generator is None else generator
    model = torch.nn.Sequential(
        torch.nn.Linear(5, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def regression_batches(
    world: int, rows: int, rank: int | None, safe_scale: torch.Tensor | None = None
):
    """(utility, safety) batches of ``rank`` (``rows`` each), or of all ``world`` ranks concatenated
    when rank is None. Utility targets are the inputs' sums, safety targets their negation, times
    ``safe_scale`` (one factor per global row) when given."""
    g = torch.Generator().manual_seed(1)
    x_util = torch.randn(world * rows, 5, generator=g, dtype=torch.float64)
    y_util = x_util.sum(1, keepdim=True)
    x_safe = torch.randn(world * rows, 5, generator=g, dtype=torch.float64)
    y_safe = -x_safe.sum(1, keepdim=True)
    if safe_scale is not None:
        y_safe = y_safe * safe_scale
    if rank is None:
        return (x_util, y_util), (x_safe, y_safe)
    own = slice(rank * rows, (rank + 1) * rows)
    return (x_util[own], y_util[own]), (x_safe[own], y_safe[own])


def mse(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def train_alphas(opt, model: torch.nn.Module, util, steps: int) -> list[float]:
    """``steps`` SPAG steps on the utility batch ``util``; each step's projection size alpha."""
    alphas = []
    for _ in range(steps):
        opt.zero_grad()
        mse(model, util).backward()
        opt.step()
        alphas.append(float(opt.last_stats["alpha"]))
    return alphas
