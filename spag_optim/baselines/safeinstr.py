"""SafeInstr: mix a few safety examples into the fine-tuning data.

Bianchi et al. 2023, "Safety-Tuned LLaMAs: Lessons From Improving the Safety of Large Language
Models that Follow Instructions" (ICLR 2024): adding a small share of (harmful instruction,
refusal) pairs to an instruction-tuning set keeps the model refusing, at little cost in
helpfulness. The SPARD paper uses it as a data-side baseline with 3% safe samples.

Here ``fraction`` is relative to the fine-tuning set: ``n_safe = round(fraction * len(data))``
safe examples, drawn without replacement from the safe pool, are mixed in (so with 3% the mixed
set has ~2.9% safe rows). The draw and the interleaving are a function of ``seed`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import Dataset

__all__ = ["SafeInstrDataset", "safeinstr_mix"]

T = TypeVar("T")


class SafeInstrDataset(Dataset, Generic[T]):
    """Map-style view of ``finetune_data`` plus ``round(fraction * len(finetune_data))`` rows of
    ``safe_data``, in a seeded random order (no rows are copied).

    Args:
        finetune_data: the user's fine-tuning examples (any sequence / map-style dataset).
        safe_data: the safe pool (harmful prompt + refusal examples, same format).
        fraction: safe rows per fine-tuning row (default 0.03, as in the SPARD paper).
        seed: picks the safe rows and the order.
        shuffle: interleave at random (default); False appends the safe rows at the end, for
            callers whose DataLoader shuffles anyway.
    """

    def __init__(
        self,
        finetune_data: Sequence[T],
        safe_data: Sequence[T],
        *,
        fraction: float = 0.03,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
        if not math.isfinite(fraction) or fraction < 0:
            raise ValueError(f"fraction must be finite and >= 0, got {fraction}")
        if len(finetune_data) == 0:
            raise ValueError("finetune_data is empty; SafeInstr mixes safe rows into existing data")
        num_safe = int(round(fraction * len(finetune_data)))
        if num_safe > len(safe_data):
            raise ValueError(
                f"fraction={fraction} of {len(finetune_data)} rows needs {num_safe} safe rows but "
                f"the safe pool has {len(safe_data)}; lower fraction or give a larger pool"
            )
        generator = torch.Generator().manual_seed(int(seed))
        picked = torch.randperm(len(safe_data), generator=generator)[:num_safe].tolist()
        # (source, index) pairs: source 0 = fine-tuning data, 1 = safe pool.
        entries = [(0, i) for i in range(len(finetune_data))] + [(1, j) for j in picked]
        if shuffle:
            order = torch.randperm(len(entries), generator=generator).tolist()
            entries = [entries[k] for k in order]
        self.finetune_data = finetune_data
        self.safe_data = safe_data
        self.fraction = float(fraction)
        self.num_safe = num_safe
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> T:
        source, i = self._entries[index]
        return (self.safe_data if source else self.finetune_data)[i]

    def is_safe(self, index: int) -> bool:
        """Whether row ``index`` of the mix came from the safe pool."""
        return bool(self._entries[index][0])

    @property
    def safe_pool_indices(self) -> list[int]:
        """Indices into ``safe_data`` of the rows that were mixed in, in mix order."""
        return [i for source, i in self._entries if source]


def safeinstr_mix(
    finetune_data: Sequence[Any],
    safe_data: Sequence[Any],
    *,
    fraction: float = 0.03,
    seed: int = 0,
    shuffle: bool = True,
) -> list[Any]:
    """The SafeInstr mix as a plain list (see :class:`SafeInstrDataset`)."""
    mixed = SafeInstrDataset(
        finetune_data, safe_data, fraction=fraction, seed=seed, shuffle=shuffle
    )
    return [mixed[i] for i in range(len(mixed))]
