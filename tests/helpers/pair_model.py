"""The tiny model and safe data the optimizer plumbing tests share."""

from __future__ import annotations

import torch


class PairLoss(torch.nn.Module):
    """``model(x=..., y=...)`` returns an object with ``.loss`` (Hugging Face style)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)
        )

    def forward(self, x, y):
        return type("Out", (), {"loss": ((self.net(x) - y) ** 2).mean()})()


def safe_dataset(n=10, seed=1, target=3.0):
    """``n`` rows ``{"x", "y"}`` whose loss pulls the outputs towards ``target``."""
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(4, generator=g), "y": torch.full((2,), target)} for _ in range(n)]


def utility_batch(step):
    """The utility batch of ``step``: 8 inputs, targets (sum, -sum); the same on every call."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=g)
    return x, torch.stack([x.sum(1), -x.sum(1)], 1)


def train(model, opt, steps, start=0, scheduler=None):
    """Steps ``start`` .. ``start + steps - 1`` of the utility task on ``model.net`` with ``opt``."""
    for step in range(start, start + steps):
        x, y = utility_batch(step)
        opt.zero_grad()
        ((model.net(x) - y) ** 2).mean().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def flat_params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])
