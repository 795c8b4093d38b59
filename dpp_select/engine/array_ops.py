"""The two array namespaces the lazy greedy's bookkeeping is written against (``lazy.py``).

The lazy greedy keeps O(N) state (gains, error bounds, steps, the pool) and works on it in many
small operations per pick. Where that state lives decides which arrays are fastest:

* on the CPU, NumPy arrays: for small pool-sized operations NumPy's per-call cost is a fraction
  of torch's dispatch, and its partial sorts and gathers are faster. This holds whichever backend
  holds the embeddings: both passes offer host products (``project``, ``project_rows``,
  ``rows``), and a CPU tensor's result is viewed as NumPy without a copy;
* on an accelerator, torch tensors on the pass's device, so that per pick nothing pool-sized
  crosses to the host (the same reason as ``device_pass.py``).

Each namespace exposes only the operations whose spelling differs between NumPy and torch,
under one name: indexing (integer, boolean, slices), in-place arithmetic, comparisons, ``@``,
``.max()``, ``.sum()`` and ``.any()`` are written directly, since they mean the same on both.
``for_device`` chooses by device; ``TorchOps`` works on any device, the CPU included, which
runs the accelerator's code path on CPU tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .device_rescore import rescore_on_device
from .kernel import CHUNK, rescore

__all__ = ["NumpyOps", "TorchOps", "for_device"]

# Elements of a (rows x basis vectors) product folded at a time by a full pass: cache sized on
# the CPU, large on an accelerator (fewer kernel launches; 32 MiB per float64 temporary).
_ACCELERATOR_FOLD_ELEMENTS = 1 << 22


class NumpyOps:
    """NumPy arrays in host memory; the products come from the pass's host methods."""

    float64 = np.float64
    step_dtype = np.int32  # steps counted up to k
    fold_elements = CHUNK
    rescore = staticmethod(rescore)  # kernel.rescore: float64 re-scoring from host rows
    minimum = staticmethod(np.minimum)
    einsum = staticmethod(np.einsum)
    absolute = staticmethod(np.abs)
    concatenate = staticmethod(np.concatenate)
    flatnonzero = staticmethod(np.flatnonzero)

    @staticmethod
    def asarray(host: np.ndarray) -> np.ndarray:
        """``host`` itself (no copy)."""
        return host

    @staticmethod
    def to_host(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def zeros(n: int, dtype: Any = np.float64) -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    @staticmethod
    def empty(n: int) -> np.ndarray:
        return np.empty(n)

    @staticmethod
    def arange(start: int, stop: int | None = None) -> np.ndarray:
        return np.arange(start) if stop is None else np.arange(start, stop)

    @staticmethod
    def copy(a: np.ndarray) -> np.ndarray:
        return a.copy()

    @staticmethod
    def top_indices(values: np.ndarray, count: int) -> np.ndarray:
        """Positions of the ``count`` largest ``values``, in no particular order."""
        return np.argpartition(-values, count - 1)[:count]

    @staticmethod
    def kth_smallest(values: np.ndarray, rank: int) -> float:
        """The value at 0-based position ``rank`` of ``values`` sorted ascending."""
        return float(np.partition(values, rank)[rank])

    @staticmethod
    def searchsorted(ascending: np.ndarray, value: int) -> int:
        return int(np.searchsorted(ascending, value))

    @staticmethod
    def stable_argsort(values: np.ndarray) -> np.ndarray:
        return np.argsort(values, kind="stable")

    @staticmethod
    def suffix_sums(values: np.ndarray) -> np.ndarray:
        """``[sum(values[s:]) for s in 0..len]``: the sums of every tail, the empty one last."""
        return np.append(np.cumsum(values[::-1])[::-1], 0.0)

    @staticmethod
    def project(xpass: Any, a: np.ndarray) -> np.ndarray:
        """The pass ``X @ a`` in the pass's precision, in a new host array."""
        v = np.empty(xpass.n, dtype=xpass.pass_dtype)
        xpass.project(a, v)
        return v

    @staticmethod
    def project_rows(xpass: Any, rows: np.ndarray | slice, basis: np.ndarray) -> np.ndarray:
        return xpass.project_rows(rows, basis)


class TorchOps:
    """torch tensors on ``device``; the products come from ``TorchPass``'s device methods."""

    float64 = torch.float64
    step_dtype = torch.int64
    rescore = staticmethod(rescore_on_device)
    minimum = staticmethod(torch.minimum)
    einsum = staticmethod(torch.einsum)
    absolute = staticmethod(torch.abs)
    concatenate = staticmethod(torch.cat)

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.fold_elements = CHUNK if self.device.type == "cpu" else _ACCELERATOR_FOLD_ELEMENTS

    def asarray(self, host: np.ndarray) -> torch.Tensor:
        """``host`` on the device (on the CPU, a view of the same memory)."""
        return torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    @staticmethod
    def to_host(a: torch.Tensor) -> np.ndarray:
        return a.cpu().numpy()

    def zeros(self, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype, device=self.device)

    def empty(self, n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.float64, device=self.device)

    def arange(self, start: int, stop: int | None = None) -> torch.Tensor:
        if stop is None:
            start, stop = 0, start
        return torch.arange(start, stop, device=self.device)

    @staticmethod
    def copy(a: torch.Tensor) -> torch.Tensor:
        return a.clone()

    @staticmethod
    def flatnonzero(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask).squeeze(1)

    @staticmethod
    def top_indices(values: torch.Tensor, count: int) -> torch.Tensor:
        """Positions of the ``count`` largest ``values``, in no particular order."""
        return torch.topk(values, count, sorted=False).indices

    @staticmethod
    def kth_smallest(values: torch.Tensor, rank: int) -> float:
        """The value at 0-based position ``rank`` of ``values`` sorted ascending."""
        return float(torch.kthvalue(values, rank + 1).values)

    @staticmethod
    def searchsorted(ascending: torch.Tensor, value: int) -> int:
        return int(torch.searchsorted(ascending, value))

    @staticmethod
    def stable_argsort(values: torch.Tensor) -> torch.Tensor:
        return torch.argsort(values, stable=True)

    @staticmethod
    def suffix_sums(values: torch.Tensor) -> torch.Tensor:
        """``[sum(values[s:]) for s in 0..len]``: the sums of every tail, the empty one last."""
        tails = torch.flip(torch.cumsum(torch.flip(values, (0,)), 0), (0,))
        return torch.cat([tails, tails.new_zeros(1)])

    @staticmethod
    def project(xpass: Any, a: np.ndarray) -> torch.Tensor:
        """The pass ``X @ a`` on the device, in a buffer the next pass overwrites."""
        return xpass.project_device(a)

    @staticmethod
    def project_rows(xpass: Any, rows: torch.Tensor | slice, basis: torch.Tensor) -> torch.Tensor:
        return xpass.project_rows_device(rows, basis)


def for_device(device: torch.device) -> NumpyOps | TorchOps:
    """NumPy for bookkeeping in host memory (the CPU), torch on any other device."""
    return NumpyOps() if device.type == "cpu" else TorchOps(device)
