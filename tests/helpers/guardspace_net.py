"""A two-input float64 network for GuardSpace tests: fast, exact, and with one shared input.

``a`` and ``b`` read ``x`` (so they share one projector), ``c`` reads ``y``. :func:`make_batches`
draws batches whose rows span a chosen subspace, so the null-space dimensions are known.
"""

from __future__ import annotations

import torch
from torch import nn

D_X, D_Y = 12, 16


class Net(nn.Module):
    """``a`` and ``b`` read the same input (one shared projector), ``c`` reads another."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(D_X, 10)
        self.b = nn.Linear(D_X, 6, bias=False)
        self.c = nn.Linear(D_Y, 9)

    def forward(self, x, y, attention_mask=None):
        return self.a(x).sum() + self.b(x).sum() + self.c(y).sum()


def make_batches(gen, n, x_rank, y_rank, masked=False):
    """``n`` batches whose x (y) rows span a fixed random subspace of dimension x_rank (y_rank)."""
    mix_x = torch.randn(x_rank, D_X, generator=gen, dtype=torch.float64)
    mix_y = torch.randn(y_rank, D_Y, generator=gen, dtype=torch.float64)
    batches = []
    for _ in range(n):
        b = {
            "x": torch.randn(2, 5, x_rank, generator=gen, dtype=torch.float64) @ mix_x,
            "y": torch.randn(2, 5, y_rank, generator=gen, dtype=torch.float64) @ mix_y,
        }
        if masked:
            mask = torch.ones(2, 5, dtype=torch.long)
            mask[1, 3:] = 0
            b["attention_mask"] = mask
        batches.append(b)
    return batches
