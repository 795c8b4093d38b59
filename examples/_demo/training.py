"""One plain supervised training loop, shared by alignment (stage 1) and the attack (stage 2).

Keeping a single loop means every method differs only in the optimizer it is handed: ``sft`` gets
AdamW, the SPAG methods get ``SPAGOptimizer(AdamW(...), safety_closure)``: the one-line change
SPARD asks of a user. The baselines' optimizers go through the same loop.

An optimizer whose ``is_alignment_step`` is true (Lisa in its alignment state) takes its step from
its own safe batch and discards ``p.grad``, so the loop skips the utility forward and backward on
that step; the user batch of that step is consumed, as in the Lisa authors' trainer, and its
recorded loss is NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from spag_optim.safety_pairs import PaddingCollator

from .encoding import EncodedExample

__all__ = ["train"]


def train(
    model: torch.nn.Module,
    rows: Sequence[EncodedExample],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    pad_id: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: Callable[[int], None] | None = None,
    desc: str = "training",
    progress: bool = True,
) -> list[float]:
    """Train for ``epochs`` passes over ``rows`` in an order drawn from ``seed``; returns the loss of
    every step (NaN on alignment steps, see the module docstring). ``on_step(step)`` runs after
    each optimizer step (the demo records the safety loss)."""
    if not rows:
        raise ValueError(f"{desc}: no training examples")
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(rows) // batch_size)
    losses: list[float] = []
    model.train()
    with tqdm(total=epochs * per_epoch, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(rows), generator=generator).tolist()
            for start in range(0, len(rows), batch_size):
                if getattr(optimizer, "is_alignment_step", False):
                    optimizer.step()
                    losses.append(float("nan"))
                else:
                    batch = PaddingCollator(pad_id)(
                        [rows[i] for i in order[start : start + batch_size]]
                    )
                    loss = model(**batch).loss
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                if scheduler is not None:
                    scheduler.step()
                if on_step is not None:
                    on_step(len(losses))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
