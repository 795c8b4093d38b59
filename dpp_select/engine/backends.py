"""The two ways of making the one pass over the embeddings that each greedy step needs.

The greedy algorithm (``kernel.py``) is written once; it asks a backend for ``v = X @ a`` (a
float32 pass, the only O(N d) work per step) and, rarely, for a few rows of ``X`` in float64 to
re-score candidates exactly. A backend also states ``unit``: a rigorous bound ``eta`` such that
``|v_i - x_i . a| <= eta * ||x_i|| * ||a||`` for the values it returns, which is what lets the
greedy keep its picks equal to an exact float64 greedy while the pass itself runs in float32.

The bound is the classical one for a dot product of length d in precision u (any summation
order, with or without FMA): gamma_d = d u / (1 - d u), plus one u for rounding ``a`` to float32
and one for rounding float64 embeddings to float32 when the pass works on a float32 copy.

float16/bfloat16 storage (torch backend) is multiplied as stored, without a float32 copy: ``a``
is scaled by a power of two and split into three parts in the storage precision u_h (``a ~ p_1 +
p_2 + p_3``, relative error u_h^3 per entry), ``X @ [p_1 p_2 p_3]`` accumulates in float32 (each
product of two half-precision numbers is exact in float32), and the three columns are added in
float32. ``pass_error_unit(d, False, half=dtype)`` bounds it (see there); the accumulation unit
there is 2^-23, not 2^-24, so that it also covers tensor cores, whose float32 accumulation
truncates instead of rounding (Fasi et al., "Numerical behavior of NVIDIA tensor cores", 2021).

That bound assumes no overflow or underflow, so a backend only multiplies the embeddings as given
when their row norms lie well inside the pass precision's range. Otherwise (and always when a
float32 copy of float64 input is made anyway) it multiplies the unit rows x_i / ||x_i||, computed
in float64, and reports unit ``norms``: every finite input keeps exact picks, from 1e-300 to
1e300. ``rows`` returns the rows of the matrix the pass uses, in float64.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

__all__ = ["NumpyPass", "TorchPass", "pass_error_unit"]

logger = logging.getLogger(__name__)

_U32 = 2.0**-24
_U64 = 2.0**-53
#: Unit roundoff and smallest subnormal spacing of the half-precision storage dtypes.
_HALF = {torch.bfloat16: (2.0**-8, 2.0**-133), torch.float16: (2.0**-11, 2.0**-24)}
_SPLIT_TOP = 13  # the split scales a so that 2^12 <= max|a| < 2^13 (float16 overflows at 2^16)
# Rows upcast at a time when the torch backend stores float16/bfloat16 (bounds the temporary).
_UPCAST_BYTES = 1 << 26


#: Row norms for which a pass multiplies the embeddings as stored, per pass precision: far from
#: overflow, and far enough from underflow that it cannot disturb the relative bound.
_SAFE_NORMS = {False: (2.0**-32, 2.0**32), True: (2.0**-300, 2.0**300)}


def _needs_unit_rows(norms: np.ndarray, float64_pass: bool) -> bool:
    low, high = _SAFE_NORMS[float64_pass]
    return bool(norms.min() < low or norms.max() > high)


def _gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def pass_error_unit(dim: int, float64_pass: bool, half: torch.dtype | None = None) -> float:
    """Relative error bound eta of one ``X @ a`` pass (see the module docstring).

    Float32/float64 pass: gamma_d(u) + 2u. Half-precision storage ``half`` multiplied through
    the three-part split of ``a`` (``TorchPass``), with u_h and mu the storage precision's unit
    roundoff and smallest subnormal spacing, and a scaled so that ||a|| >= 2^12:
    u_h^3 + 1.5 mu sqrt(d) 2^-12 (the split: each part rounded, subnormals included)
    + gamma_d(2^-23) (1 + 3 u_h) (float32 accumulation of the three exact-product columns;
    sum |p_1| + |p_2| + |p_3| <= (1 + 3 u_h) |a|) + gamma_2(2^-24) (1 + 3 u_h) (1 + gamma_d)
    (adding the three columns). The factor 1.001 covers the second-order terms and underflow
    of the final unscaling, which the norm range of ``_SAFE_NORMS`` keeps below 2^-100.
    """
    if half is not None:
        u_h, mu = _HALF[half]
        split = u_h**3 + 1.5 * mu * math.sqrt(dim) * 2.0 ** -(_SPLIT_TOP - 1)
        accumulate = _gamma(dim, 2.0 * _U32) * (1.0 + 3.0 * u_h)
        columns = _gamma(2, _U32) * (1.0 + 3.0 * u_h) * (1.0 + accumulate)
        return (split + accumulate + columns) * 1.001
    u = _U64 if float64_pass else _U32
    return (_gamma(dim, u) + 2.0 * u) * 1.001


class NumpyPass:
    """``X @ a`` with NumPy/BLAS on a float32 matrix.

    float32 input with ordinary norms is used in place; float64 input (or float32 input with
    extreme norms) is replaced by a float32 copy of its unit rows, which costs half of a float64
    input's memory, as the plain float32 copy did.
    """

    device = torch.device("cpu")  # where the pass's arrays live, as ``TorchPass.device``

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
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    )


class TorchPass:
    """``X @ a`` with torch on any device, X kept in its dtype and the result left there.

    float32 and float64 tensors are multiplied as stored (``torch.mv``). float16/bfloat16
    tensors are multiplied as stored too, through the three-part split of ``a`` (module
    docstring): on CUDA one ``torch.mm(..., out_dtype=torch.float32)`` reads X once; elsewhere,
    where that kernel does not exist, a bounded block of rows at a time is widened to float32
    (exact) for the same products. The picks are exact for the stored (rounded) embeddings; the
    rounding to half precision itself (relative 2^-11 for float16, 2^-8 for bfloat16 per entry)
    is the only tolerance against the original float32 embeddings. When TF32 is enabled for
    float32 products on a CUDA device, the pass runs in float64 (half-precision blocks widened
    the same way) because TF32 voids the float32 bound.
    """

    def __init__(
        self, x: torch.Tensor, norms: np.ndarray, device: torch.device | str | None = None
    ) -> None:
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
            self._norms_dev = torch.from_numpy(norms).to(self.device)
        self._half = self._x.dtype if self._x.dtype in _HALF and not self._f64 else None
        self._direct = self.device.type == "cuda"  # torch.mm(..., out_dtype=) exists there
        self._block = max(1, _UPCAST_BYTES // (self._pass_dtype.itemsize * self.d))
        self.unit = pass_error_unit(self.d, float64_pass=self._f64, half=self._half)
        self._out: torch.Tensor | None = None  # the pass's result, reused by every call
        self._columns: torch.Tensor | None = None  # the widening split pass's three columns

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

    def project_device(self, a: np.ndarray) -> torch.Tensor:
        """``X @ a`` on the device, in ``pass_dtype``, within ``unit * ||x_i|| * ||a||``.

        The result lives in a buffer that the next call overwrites (no O(N) allocation per
        pick)."""
        if self._out is None:
            self._out = torch.empty(self.n, dtype=self._pass_dtype, device=self.device)
        out = self._out
        if self._half is not None:
            return self._half_project(a, out)
        a_dev = torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self._pass_dtype)
        if self._x.dtype == self._pass_dtype:
            return torch.mv(self._x, a_dev, out=out)
        for lo in range(0, self.n, self._block):  # half storage widened for a float64 pass
            hi = min(self.n, lo + self._block)
            torch.mv(self._x[lo:hi].to(self._pass_dtype), a_dev, out=out[lo:hi])
        return out

    def _half_project(self, a: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        """The split pass over half-precision storage (module docstring), into ``out``."""
        peak = float(np.max(np.abs(a)))
        if peak == 0.0:
            return out.zero_()
        shift = _SPLIT_TOP - math.frexp(peak)[1]  # 2^12 <= max|a| 2^shift < 2^13
        rest = torch.from_numpy(np.ldexp(np.asarray(a, dtype=np.float64), shift))
        parts = []
        for _ in range(3):
            parts.append(rest.to(self._half))
            rest = rest - parts[-1].to(torch.float64)  # exact in float64
        split = torch.stack(parts).to(self.device)
        columns = self._half_products(split)
        torch.add(columns[:, 0], columns[:, 1], out=out)
        out.add_(columns[:, 2])
        return out.mul_(2.0**-shift)  # exact: a power of two (underflow: see pass_error_unit)

    def _half_products(self, split: torch.Tensor) -> torch.Tensor:
        """``X @ split.T`` with float32 accumulation and output, X read as stored."""
        if self._direct:
            try:
                return torch.mm(self._x, split.T, out_dtype=torch.float32)
            except (RuntimeError, TypeError, NotImplementedError) as err:
                logger.warning(
                    "torch.mm(..., out_dtype=torch.float32) is not available on "
                    "%s (%s); the pass widens blocks of rows instead",
                    self.device,
                    err,
                )
                self._direct = False
        if self._columns is None:
            self._columns = torch.empty(self.n, 3, dtype=torch.float32, device=self.device)
        out, wide = self._columns, split.to(torch.float32)
        for lo in range(0, self.n, self._block):
            hi = min(self.n, lo + self._block)
            torch.mm(self._x[lo:hi].to(torch.float32), wide.T, out=out[lo:hi])
        return out

    def project(self, a: np.ndarray, out: np.ndarray) -> None:
        """Write ``X @ a`` (in ``pass_dtype``) into the NumPy array ``out``."""
        torch.from_numpy(out).copy_(self.project_device(a))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows ``idx`` of the pass's matrix (unit rows when normalised), float64 on the
        CPU."""
        index = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(self.device)
        return self.device_rows(index).cpu().numpy()

    def device_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The rows ``index`` (a device tensor) of the pass's matrix, float64 on the device."""
        rows = self._source.index_select(0, index).to(torch.float64)
        return rows / self._norms_dev[index, None] if self._unit else rows

    def project_rows(self, rows: np.ndarray | slice, basis: np.ndarray) -> np.ndarray:
        """``project_rows_device`` for host arrays: ``rows`` an index array or a slice, ``basis``
        float64; the product comes back as NumPy (a view, without a copy, on the CPU)."""
        if not isinstance(rows, slice):
            rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device)
        b = torch.from_numpy(np.ascontiguousarray(basis)).to(self.device)
        return self.project_rows_device(rows, b).cpu().numpy()

    def project_rows_device(self, rows: torch.Tensor | slice, basis: torch.Tensor) -> torch.Tensor:
        """``X[rows] @ basis.T`` in ``pass_dtype`` on the device (``basis`` float64 there).

        ``rows`` is an index tensor on the device (a few hundred rows, gathered) or a slice
        (half-precision storage widened a bounded block at a time). Each entry is within the
        float32 (or float64) bound, which the split pass's ``unit`` exceeds.
        """
        b = basis.to(self._pass_dtype)
        if not isinstance(rows, slice):
            return self._x.index_select(0, rows).to(self._pass_dtype) @ b.T
        block = self._x[rows]
        if block.dtype == self._pass_dtype:
            return block @ b.T
        out = torch.empty(block.shape[0], b.shape[0], dtype=self._pass_dtype, device=self.device)
        for lo in range(0, block.shape[0], self._block):
            out[lo : lo + self._block] = block[lo : lo + self._block].to(self._pass_dtype) @ b.T
        return out

    @property
    def pass_dtype(self) -> np.dtype:
        """NumPy dtype of the values ``project`` writes."""
        return np.dtype(np.float64 if self._f64 else np.float32)
