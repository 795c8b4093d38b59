"""The tiny model and safe data the optimizer plumbing tests share."""

from __future__ import annotations

import torch


class PairLoss(torch.nn.Module):
    """``model(x=..., y=...)`` returns an object with ``.loss`` (Hugging Face style)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))

    def forward(self, x, y):
        return type("Out", (), {"loss": ((self.net(x) - y) ** 2).mean()})()


def safe_dataset(n=10, seed=1, target=3.0):
    """``n`` rows ``{"x", "y"}`` whose loss pulls the outputs towards ``target``."""
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(4, generator=g), "y": torch.full((2,), target)} for _ in range(n)]
