"""The operators portable numerics computes itself, so that no vendor library decides their bits.

**Products.** Every CPU matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``addbmm``,
``mv``, ``addmv``, ``dot``, ``vdot``, ``addr``) would go to MKL, whose code path, blocking and
instruction set depend on the CPU's vendor and model. :func:`exact_matmul` rounds each operand to
integers of at most ``b`` bits under a power-of-two scale per row of the left and per column of
the right operand, and multiplies the integers in float64: every partial sum is an integer of
magnitude at most ``k 2^(2b) <= 2^53``, so the product is **exact in any summation order, with or
without FMA**, whatever BLAS computes it. Scaling back by powers of two is exact, and the one
rounding to the operands' dtype is IEEE round-to-nearest. With ``b = min(24, (53 - ceil(log2
k)) // 2)`` (23 bits at ``k = 64``, 20 at ``k = 8192``) an entry's error is at most ``k 2^-b
max_j|a_ij| max_j|b_jn|``: float32-grade (float32's own bound is ``k 2^-24 sum_j |a_ij b_jn|``).
float64 operands are multiplied elementwise and summed by ATen's reduction instead (full float64
precision, in the fixed order of the ``DEFAULT`` kernels).

**Elementary functions.** ATen hands ``sqrt``, ``exp``, ``log``, ``log2``, ``log10``, ``tanh``
and ``logsumexp`` to MKL's vector math library, which again picks code by CPU (measured: each
changes bits with ``MKL_CBWR``, while ``exp2``, ``expm1``, ``log1p``, ``rsqrt``, ``sigmoid``,
``softmax`` and ``pow`` do not). They are computed here from the latter in float64 and rounded
once to the input's dtype: ``sqrt x = 1 / rsqrt x``, ``exp x = exp2(x log2 e)``, ``log x =
log1p(m - 1) + e ln 2`` for ``x = m 2^e`` (``frexp``: ``m - 1`` is exact), ``tanh x =
sign(x) (-t / (2 + t))`` with ``t = expm1(-2|x|)``. Each is within a few float64 units of the true
value, so the float32 result is the correctly rounded one except within such a distance of a
rounding boundary; what matters here is that it is the same on every CPU. Functions MKL computes
that the demo never calls (``erf``, the trigonometric inverses, ...) raise instead of silently
depending on the CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["PortableKernels", "exact_matmul", "PortabilityError"]

_MANTISSA64 = 53
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


class PortabilityError(RuntimeError):
    """An operator whose bits depend on the CPU ran under portable numerics."""


def _operand_bits(k: int) -> int:
    """Bits per operand so that ``k`` products of two of them sum exactly in float64."""
    return min(24, (_MANTISSA64 - max(0, math.ceil(math.log2(max(k, 1))))) // 2)


def _to_integers(x: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float64 integers ``q``, ``|q| <= 2^bits``, and the powers of two ``u`` (kept along
    ``axis``) with ``x ~ q u``: one scale per slice along ``axis``. Every step is exact or a
    correctly rounded IEEE operation (``abs``, ``max``, ``frexp``, a product with a power of two,
    ``rint``), so NumPy's choice of vector code cannot change a bit."""
    _, exponent = np.frexp(np.maximum.reduce(np.abs(x), axis=axis, keepdims=True))  # peak < 2^e
    q = x.astype(np.float64)
    q *= np.ldexp(1.0, bits - exponent)  # exact: a power of two, and |q| < 2^bits
    np.rint(q, out=q)
    return q, np.ldexp(1.0, exponent - bits)


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """``x`` as a NumPy array, bfloat16 widened to float32 (exact; NumPy has no bfloat16)."""
    x = x.detach()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (batched as ``torch.matmul``; both at least 2-D) with a value independent of the
    BLAS and of the summation order (module docstring)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    if dtype == torch.float64 or not dtype.is_floating_point:
        return (a.to(dtype).unsqueeze(-1) * b.to(dtype).unsqueeze(-3)).sum(-2)
    if a.shape[-1] == 0:  # an empty sum (no slice has a peak to scale by)
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return torch.zeros(*batch, a.shape[-2], b.shape[-1], dtype=dtype)
    bits = _operand_bits(a.shape[-1])
    # inf and NaN propagate as in any BLAS, without NumPy's warnings (torch gives none).
    with np.errstate(all="ignore"):
        qa, ua = _to_integers(_as_numpy(a), -1, bits)  # a scale per row of a
        qb, ub = _to_integers(_as_numpy(b), -2, bits)  # a scale per column of b
        # Exact: integers below 2^53, summed in any order. NumPy's BLAS computes it, since
        # torch's own product kernels are the ones PortableKernels replaces. Scaling back is
        # exact too (powers of two, far from float64's range limits), so the cast rounds once.
        product = np.matmul(qa, qb)
        product *= ua
        product *= ub
    return torch.from_numpy(product).to(dtype)


def _scaled_sum(bias: torch.Tensor, product: torch.Tensor, beta=1, alpha=1) -> torch.Tensor:
    """``beta bias + alpha product`` as the BLAS-style operators define it (``beta = 0`` ignores
    ``bias``, NaN included)."""
    if alpha != 1:
        product = product * alpha
    if beta == 0:
        return product.to(bias.dtype)
    return (bias if beta == 1 else bias * beta) + product


def _mv(a, v):
    return exact_matmul(a, v.unsqueeze(-1)).squeeze(-1)


def _dot(a, b):
    return exact_matmul(a.unsqueeze(0), b.unsqueeze(-1)).reshape(())


_PRODUCTS: dict[str, Callable] = {
    "mm": lambda a, b, out_dtype=None: exact_matmul(a, b).to(out_dtype or a.dtype),
    "bmm": lambda a, b, out_dtype=None: exact_matmul(a, b).to(out_dtype or a.dtype),
    "addmm": lambda c, a, b, beta=1, alpha=1: _scaled_sum(c, exact_matmul(a, b), beta, alpha),
    "baddbmm": lambda c, a, b, beta=1, alpha=1: _scaled_sum(c, exact_matmul(a, b), beta, alpha),
    "addbmm": lambda c, a, b, beta=1, alpha=1: _scaled_sum(
        c, exact_matmul(a, b).sum(0), beta, alpha
    ),
    "mv": _mv,
    "addmv": lambda c, a, v, beta=1, alpha=1: _scaled_sum(c, _mv(a, v), beta, alpha),
    "dot": _dot,
    "vdot": lambda a, b: _dot(a.conj(), b),
    "addr": lambda c, a, b, beta=1, alpha=1: _scaled_sum(
        c, exact_matmul(a.unsqueeze(-1), b.unsqueeze(0)), beta, alpha
    ),
}


def _in_float64(
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` evaluated in float64 and rounded once to the result's dtype (the input's, or the
    default float dtype for integer input, as ATen promotes)."""

    def rounded_once(x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
        return fn(x.to(torch.float64)).to(dtype)

    return rounded_once


def _log(x: torch.Tensor) -> torch.Tensor:
    mantissa, exponent = torch.frexp(x)
    return torch.log1p(mantissa - 1.0) + exponent.to(x.dtype) * _LN2


def _tanh(x: torch.Tensor) -> torch.Tensor:
    t = torch.expm1(-2.0 * x.abs())
    return torch.copysign(-t / (2.0 + t), x)


_ELEMENTARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sqrt": _in_float64(lambda x: 1.0 / torch.rsqrt(x)),
    "exp": _in_float64(lambda x: torch.exp2(x * _LOG2E)),
    "log": _in_float64(_log),
    "log2": _in_float64(lambda x: _log(x) * _LOG2E),
    "log10": _in_float64(lambda x: _log(x) / math.log(10.0)),
    "tanh": _in_float64(_tanh),
}

#: MKL-computed functions nothing in the demo calls: refused rather than left CPU-dependent.
_REFUSED = (
    "erf erfc erfinv acos asin atan cosh sinh tan lgamma "
    "_scaled_dot_product_flash_attention_for_cpu "
    "_scaled_dot_product_flash_attention_for_cpu_backward "
    "_linalg_svd _linalg_eigh linalg_inv_ex _linalg_solve_ex linalg_qr linalg_cholesky_ex "
    "linalg_eig _linalg_det _linalg_slogdet linalg_lstsq linalg_lu_factor_ex"
).split()


def _logsumexp(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    peak = x.amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isinf(peak), torch.zeros_like(peak), peak)
    total = _ELEMENTARY["exp"](x - peak).sum(dim=dim, keepdim=True)
    result = _ELEMENTARY["log"](total) + peak
    return result if keepdim else result.squeeze(dim)


def _value(fn: Callable) -> Callable:
    """A kernel for a functional overload (``out=`` included) computing ``fn``."""

    def kernel(*args, out=None, **kwargs):
        result = fn(*args, **kwargs)
        return result if out is None else out.resize_(result.shape).copy_(result)

    return kernel


def _inplace(fn: Callable) -> Callable:
    return lambda self, *args, **kwargs: self.copy_(fn(self, *args, **kwargs))


def _foreach(fn: Callable) -> Callable:
    return lambda tensors: [fn(t) for t in tensors]


def _foreach_inplace(fn: Callable) -> Callable:
    def kernel(tensors):
        for t in tensors:
            t.copy_(fn(t))

    return kernel


def _refuse(name: str) -> Callable:
    def kernel(*args, **kwargs):
        raise PortabilityError(
            f"aten::{name} is computed by a vendor library (MKL) whose bits depend on the CPU, "
            "and portable numerics has no replacement for it; use --numerics native"
        )

    return kernel


def _kernels() -> dict[str, Callable]:
    """Operator overload name -> the CPU kernel portable numerics puts in its place."""
    table: dict[str, Callable] = {}
    for name, fn in _PRODUCTS.items():
        table[name] = table[name + ".out"] = _value(fn)
        table[name + "_"] = _inplace(fn)
    for name, fn in {**_ELEMENTARY, "logsumexp": _logsumexp}.items():
        table[name] = table[name + ".out"] = _value(fn)
        table[name + "_"] = _inplace(fn)
        table[f"_foreach_{name}"] = _foreach(fn)
        table[f"_foreach_{name}_"] = _foreach_inplace(fn)
    table.update({name: _refuse(name) for name in _REFUSED})
    return {name: kernel for name, kernel in table.items() if _has_cpu_kernel(name)}


def _has_cpu_kernel(name: str) -> bool:
    """Whether ``aten::name`` (``op`` or ``op.overload``) exists with a CPU kernel of its own."""
    packet, _, overload = name.partition(".")
    try:
        exists = (overload or "default") in getattr(torch.ops.aten, packet).overloads()
    except AttributeError:
        return False
    return exists and torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "CPU")


class PortableKernels:
    """While entered, the CPU kernels of every matrix product and MKL-computed elementary
    function are the ones of this module (module docstring); every other operator is untouched
    and runs at full speed. Sits below autograd, so backward passes are covered too.

    ``counts`` records how often each replaced kernel ran. One instance at a time: the kernels are
    the process's, restored on exit.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._library: torch.library.Library | None = None

    def __enter__(self) -> PortableKernels:
        if self._library is not None:
            raise RuntimeError("PortableKernels is already entered")
        library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():  # replacing an existing CPU kernel is the point
            warnings.simplefilter("ignore")
            for name, kernel in _kernels().items():
                library.impl(name, self._counted(name, kernel), "CPU")
        self._library = library
        return self

    def __exit__(self, *exc) -> None:
        self._library._destroy()
        self._library = None

    def _counted(self, name: str, kernel: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return kernel(*args, **kwargs)

        return counted
