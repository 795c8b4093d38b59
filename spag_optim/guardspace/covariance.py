r"""Step 1 of GuardSpace (arXiv 2510.14301): input covariances of Linear layers, streamed from hooks.

For every target Linear, :math:`C = \frac{1}{N}\sum_t x_t x_t^\top` over the N non-padding tokens of
all batches (rows where ``attention_mask`` is 0 are skipped when the mask matches the input's
leading shape), accumulated on the layer's device in ``dtype`` (float64 by default: the null-space
threshold :math:`10^{-6}\lambda_{max}` is within 10x of float32's resolution).

A batch's ``attention_mask`` must have the shape of its ``input_ids`` (or of ``inputs_embeds``
without the last dimension). A Linear whose input is not laid out per token (a pooler, the experts
of a mixture-of-experts layer, which see only their routed tokens) counts every row it reads. When
no token reaches a layer unmasked, ``C`` would be 0/0: that is an error, never a NaN covariance.

Layers that read the *same* input tensor (q/k/v after the attention norm, gate/up after the MLP
norm) are found on the first batch and share one accumulator, so each covariance is computed and
stored once per group.

The authors' hooks divide every batch by ``torch.max(input).abs()`` (the absolute value of the
signed maximum) before accumulating. That is dropped: it re-weights batches by one token's value,
makes C depend on how the data are batched, and guards against fp16/fp32 overflow, which float64
accumulation of a token mean does not need. Its other effect, keeping C near O(1) so that the
adapter factors are balanced, is obtained by scaling C to unit mean diagonal in step 2
(:func:`.decompose.preconditioned_svd`); the null-space threshold is relative, so scale-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["input_covariances"]


class _Collector:
    """Forward pre-hooks that find shared inputs on the first batch, then accumulate one covariance
    per group of layers."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.leader: dict[str, str] = {}  # layer -> the first layer that read the same tensor
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.mask: Tensor | None = None
        self._first: dict[int, tuple[Tensor, str]] | None = {}

    def hook(self, name: str):
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if self._first is not None:  # first batch: which layers read the same tensor
                seen = self._first.get(id(x))
                if seen is not None and seen[0] is x:
                    self.leader[name] = seen[1]
                    return
                self._first[id(x)] = (x, name)  # holding x keeps its id unique during the batch
                self.leader[name] = name
            elif self.leader.get(name, name) != name:
                return
            self._accumulate(name, x)

        return pre_hook

    def _accumulate(self, name: str, x: Tensor) -> None:
        if self.mask is not None and tuple(x.shape[:-1]) == tuple(self.mask.shape):
            rows = x[self.mask.to(x.device)]
        else:
            rows = x.reshape(-1, x.shape[-1])
        rows = rows.to(self.dtype)
        if name not in self.sums:
            self.sums[name] = torch.zeros(
                x.shape[-1], x.shape[-1], dtype=self.dtype, device=x.device
            )
            self.counts[name] = 0
        self.sums[name].addmm_(rows.T, rows)
        self.counts[name] += rows.shape[0]

    def end_batch(self) -> None:
        self._first = None


def _check_mask_shape(batch: Mapping[str, Any], mask: Tensor | None, where: str) -> None:
    """Refuse an ``attention_mask`` that is not shaped like the batch's tokens: the hooks would
    silently count every row, padding included."""
    if mask is None:
        return
    ids, embeds = batch.get("input_ids"), batch.get("inputs_embeds")
    name, tokens = ("input_ids", ids) if isinstance(ids, Tensor) else ("inputs_embeds", embeds)
    if not isinstance(tokens, Tensor):
        return
    shape = tuple(tokens.shape) if name == "input_ids" else tuple(tokens.shape[:-1])
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"{where}: attention_mask has shape {tuple(mask.shape)} but {name} has {shape}: give one "
            "mask entry per token (1 to count it, 0 for padding), or no attention_mask"
        )


@torch.no_grad()
def input_covariances(
    model: nn.Module,
    layers: Mapping[str, nn.Linear],
    batches: Iterable[Mapping[str, Any]],
    *,
    dtype: torch.dtype = torch.float64,
    desc: str = "covariances",
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Run ``model(**batch)`` over ``batches`` and return ``(covariances, leader)``: one covariance
    per group leader, and for every layer the name of its group's leader."""
    collector = _Collector(dtype)
    handles = [
        module.register_forward_pre_hook(collector.hook(name)) for name, module in layers.items()
    ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        iterator = batches
        if progress:
            from tqdm.auto import (
                tqdm,
            )  # the `hf` extra; GuardSpace runs on Hugging Face-style models

            iterator = tqdm(batches, desc=desc, leave=False)
        for index, batch in enumerate(iterator):
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            mask = batch.get("attention_mask")
            _check_mask_shape(batch, mask, f"{desc}: batch {index}")
            collector.mask = None if mask is None else mask.bool()
            model(**batch)
            collector.end_batch()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in layers if collector.leader.get(name, name) not in collector.sums]
    if missing:
        raise ValueError(
            f"{desc}: no batch reached {missing[:5]}; give at least one batch that runs them"
        )
    masked_out = [name for name, count in collector.counts.items() if count == 0]
    if masked_out:
        raise ValueError(
            f"{desc}: no unmasked token reached {masked_out[:5]}: every attention_mask entry of every "
            "batch is 0 there. attention_mask is 1 on the tokens to count and 0 on padding; check that "
            "the masks are not all zero or inverted"
        )
    bad = [name for name, s in collector.sums.items() if not bool(torch.isfinite(s).all())]
    if bad:
        raise ValueError(
            f"{desc}: non-finite inputs reached {bad[:5]}; check the model and batches"
        )
    return {name: s / collector.counts[name] for name, s in collector.sums.items()}, dict(
        collector.leader
    )
