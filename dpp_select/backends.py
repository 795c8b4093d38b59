"""The two ways of making the one pass over the embeddings that each greedy step needs.

The greedy algorithm (``kernel.py``) is written once; it asks a backend for ``v = X @ a`` (a
float32 pass, the only O(N d) work per step) and, rarely, for a few rows of ``X`` in float64 to
re-score candidates exactly. A backend also states ``unit``: a rigorous bound ``eta`` such that
``|v_i - x_i . a| <= eta * ||x_i|| * ||a||`` for the values it returns, which is what lets the
greedy keep its picks equal to an exact float64 greedy while the pass itself runs in float32.

The bound is the classical one for a dot product of length d in precision u (any summation
order, with or without FMA): gamma_d = d u / (1 - d u), plus one u for rounding ``a`` to float32
and one for rounding float64 embeddings to float32 when the pass works on a float32 copy.

That bound assumes no overflow or underflow, so a backend only multiplies the embeddings as given
when their row norms lie well inside the pass precision's range. Otherwise (and always when a
float32 copy of float64 input is made anyway) it multiplies the unit rows x_i / ||x_i||, computed
in float64, and reports unit ``norms``: every finite input keeps exact picks, from 1e-300 to
1e300. ``rows`` returns the rows of the matrix the pass uses, in float64.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["NumpyPass", "TorchPass", "pass_error_unit"]

logger = logging.getLogger(__name__)

_U32 = 2.0**-24
_U64 = 2.0**-53
# Rows upcast at a time when the torch backend stores float16/bfloat16 (bounds the temporary).
_UPCAST_BYTES = 1 << 26


#: Row norms for which a pass multiplies the embeddings as stored, per pass precision: far from
#: overflow, and far enough from underflow that it cannot disturb the relative bound.
_SAFE_NORMS = {False: (2.0**-32, 2.0**32), True: (2.0**-300, 2.0**300)}


def _needs_unit_rows(norms: np.ndarray, float64_pass: bool) -> bool:
    low, high = _SAFE_NORMS[float64_pass]
    return bool(norms.min() < low or norms.max() > high)


def pass_error_unit(dim: int, float64_pass: bool) -> float:
    """Relative error bound eta of one ``X @ a`` pass (see the module docstring)."""
    u = _U64 if float64_pass else _U32
    gamma = dim * u / (1.0 - dim * u)
    return (gamma + 2.0 * u) * 1.001


class NumpyPass:
    """``X @ a`` with NumPy/BLAS on a float32 matrix.

    float32 input with ordinary norms is used in place; float64 input (or float32 input with
    extreme norms) is replaced by a float32 copy of its unit rows, which costs half of a float64
    input's memory, as the plain float32 copy did.
    """

    def __init__(self, x: np.ndarray, norms: np.ndarray) -> None:
        self._source = x
        self.n, self.d = x.shape
        self._unit_rows = x.dtype != np.float32 or _needs_unit_rows(norms, False)
        self._norms = norms
        if self._unit_rows:
            self._x32 = np.empty(x.shape, dtype=np.float32)
            block = max(1, _UPCAST_BYTES // (8 * self.d))
            for lo in range(0, self.n, block):
                hi = min(self.n, lo + block)
                self._x32[lo:hi] = np.asarray(x[lo:hi], dtype=np.float64) / norms[lo:hi, None]
            self.norms = np.ones(self.n)
        else:
            self._x32 = x
            self.norms = norms
        self.unit = pass_error_unit(self.d, float64_pass=False)
        self.pass_dtype = np.dtype(np.float32)

    def project(self, a: np.ndarray, out: np.ndarray) -> None:
        """Write ``X @ a`` (float32) into ``out``."""
        np.matmul(self._x32, a.astype(np.float32), out=out)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` of the pass's matrix (unit rows when normalised), in float64."""
        rows = np.asarray(self._source[idx], dtype=np.float64)
        return rows / self._norms[idx, None] if self._unit_rows else rows

    def project_rows(self, rows: np.ndarray | slice, basis: np.ndarray) -> np.ndarray:
        """``X[rows] @ basis.T`` in float32, each entry within the same bound as ``project``."""
        return self._x32[rows] @ basis.astype(np.float32).T  # a rounded as in project


def _tf32_enabled(device: torch.device) -> bool:
    """Whether float32 products on ``device`` may use TF32 (10-bit mantissa)."""
    return device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32
        or torch.get_float32_matmul_precision() != "highest"
    )


class TorchPass:
    """``X @ a`` with torch on any device, X kept in its dtype.

    float32 and float64 tensors are multiplied as stored. float16/bfloat16 tensors are upcast to
    float32 a block of rows at a time (exact), so the float32 error bound still holds and the
    picks are exact for the stored (rounded) embeddings; the rounding to half precision itself
    (relative 2^-11 for float16, 2^-8 for bfloat16 per entry) is the only tolerance against the
    original float32 embeddings. When TF32 is enabled for float32 products on a CUDA device,
    the pass runs in float64 (blocks upcast the same way) because TF32 voids the float32 bound.
    """

    def __init__(self, x: torch.Tensor, norms: np.ndarray,
                 device: torch.device | str | None = None) -> None:
        self._x = x if device is None else x.to(device)
        self.device = self._x.device
        self.n, self.d = self._x.shape
        self._f64 = self._x.dtype == torch.float64 or _tf32_enabled(self.device)
        if self._f64 and self._x.dtype != torch.float64:
            logger.warning(
                "TF32 is enabled for float32 matrix products on %s, which voids the float32 "
                "error bound; the greedy DPP pass runs in float64 instead (exact, slower). "
                "Set torch.backends.cuda.matmul.allow_tf32 = False and "
                "torch.set_float32_matmul_precision('highest') for the float32 pass.",
                self.device,
            )
        self._pass_dtype = torch.float64 if self._f64 else torch.float32
        self._source, self._norms, self.norms = self._x, norms, norms
        self._unit = _needs_unit_rows(norms, self._f64)
        if self._unit:
            self._x = self._unit_rows(norms)
        self._upcast = self._x.dtype != self._pass_dtype
        self._block = max(1, _UPCAST_BYTES // (self._pass_dtype.itemsize * self.d))
        self.unit = pass_error_unit(self.d, float64_pass=self._f64)

    def _unit_rows(self, norms: np.ndarray) -> torch.Tensor:
        """x_i / ||x_i|| computed in float64, stored in the pass dtype, block by block."""
        out = torch.empty(self._x.shape, dtype=self._pass_dtype, device=self.device)
        scale = torch.from_numpy(norms).to(self.device)
        block = max(1, _UPCAST_BYTES // (8 * self.d))
        for lo in range(0, self.n, block):
            hi = min(self.n, lo + block)
            out[lo:hi] = self._x[lo:hi].to(torch.float64) / scale[lo:hi, None]
        self.norms = np.ones(self.n)
        return out

    def project(self, a: np.ndarray, out: np.ndarray) -> None:
        """Write ``X @ a`` (in ``pass_dtype``) into the NumPy array ``out``."""
        a_dev = torch.from_numpy(a).to(device=self.device, dtype=self._pass_dtype)
        on_cpu = self.device.type == "cpu"
        target = torch.from_numpy(out) if on_cpu else torch.empty(
            self.n, dtype=self._pass_dtype, device=self.device
        )
        if not self._upcast:
            torch.mv(self._x, a_dev, out=target)
        else:
            for lo in range(0, self.n, self._block):
                hi = min(self.n, lo + self._block)
                torch.mv(self._x[lo:hi].to(self._pass_dtype), a_dev, out=target[lo:hi])
        if not on_cpu:
            out[:] = target.cpu().numpy()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` of the pass's matrix (unit rows when normalised), float64 on the
        CPU."""
        index = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(self.device)
        rows = self._source.index_select(0, index).to(torch.float64).cpu().numpy()
        return rows / self._norms[idx, None] if self._unit else rows

    def project_rows(self, rows: np.ndarray | slice, basis: np.ndarray) -> np.ndarray:
        """``X[rows] @ basis.T`` in ``pass_dtype`` on the device, returned as NumPy.

        ``rows`` is an index array (gathered on the device) or a slice of at most a few
        thousand rows (upcast whole when X is stored in half precision).
        """
        if isinstance(rows, slice):
            block = self._x[rows]
        else:
            index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
            block = self._x.index_select(0, index.to(self.device))
        b = torch.from_numpy(np.ascontiguousarray(basis)).to(self.device, self._pass_dtype)
        return (block.to(self._pass_dtype) @ b.T).cpu().numpy()

    @property
    def pass_dtype(self) -> np.dtype:
        """NumPy dtype of the values ``project`` writes."""
        return np.dtype(np.float64 if self._f64 else np.float32)
