"""Portable numerics: the same bits on any x86-64-v3 CPU, for the demo and the sweep.

Three things make a float32 training run differ between two CPUs with the same code and versions:

1. **ATen's vector kernels.** Reductions (sums, softmax, norms), random fills and elementwise
   functions run a kernel chosen for the CPU's vector width (AVX-512, AVX2, or the portable
   ``DEFAULT``); another width sums in another order. ``ATEN_CPU_CAPABILITY=default`` pins the
   ``DEFAULT`` kernels, the same instructions on every x86-64 CPU. ATen reads it once, when it
   starts, so it is set in the environment of a fresh process (:func:`portable_env`,
   :func:`run_portable`).
2. **MKL.** Matrix products and several elementary functions (``sqrt``, ``exp``, ``log``,
   ``tanh``) go to MKL, which picks code by CPU vendor and model; not even ``MKL_CBWR=COMPATIBLE``
   gives the same bits on an Intel Xeon and an AMD EPYC (``docs/demo.md``).
   :class:`~_demo.portable_ops.PortableKernels` computes them without it: products exactly in
   integers, the functions from MKL-free ones (``portable_ops.py``).
3. **Threads.** One thread, so no reduction is split by the thread count.

What remains platform-dependent: glibc's ``expf``/``logf`` and friends, which the ``DEFAULT``
kernels call; glibc picks its FMA variants on every x86-64-v3 CPU (Intel since Haswell, AMD since
Zen), so the bits hold across such CPUs with the same glibc and the pinned Python packages
(``constraints.txt``), not across libc builds or older instruction sets. Attention runs the math
kernel (``sdpa_kernel(MATH)``), built from the products, instead of the fused CPU kernel that
calls the BLAS itself. The cost in time is measured in ``docs/demo.md``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .portable_ops import PortableKernels

__all__ = [
    "NUMERICS",
    "in_portable_process",
    "portable_env",
    "portable_numerics",
    "run_portable",
    "use_portable_numerics",
]

#: The ``--numerics`` settings: ``native`` (this CPU's fastest kernels: numbers vary by CPU) and
#: ``portable`` (the same bits on any x86-64-v3 CPU; module docstring).
NUMERICS = ("native", "portable")

#: What a portable process is started with: the DEFAULT ATen kernels and one thread everywhere.
_PORTABLE_VARIABLES = {
    "ATEN_CPU_CAPABILITY": "default",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def portable_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the portable settings."""
    return {**(os.environ if base is None else base), **_PORTABLE_VARIABLES}


@contextlib.contextmanager
def portable_numerics() -> Iterator[PortableKernels]:
    """Run the body with portable numerics: exact products, the math attention kernel, one
    thread. The process must have been started with :func:`portable_env` (checked: ATen reads its
    kernel setting once, at start-up)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise RuntimeError(
            f"portable numerics need the DEFAULT ATen kernels, but this process runs {capability}: "
            "start it with ATEN_CPU_CAPABILITY=default (run_portable does)"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with sdpa_kernel(SDPBackend.MATH), PortableKernels() as kernels:
            yield kernels
    finally:
        torch.set_num_threads(threads)


#: What :func:`use_portable_numerics` entered, kept open for the process's life.
_FOR_THE_PROCESS = contextlib.ExitStack()
_ENTERED: list[PortableKernels] = []


def use_portable_numerics() -> PortableKernels:
    """Portable numerics for the rest of this process (a worker's initializer); the kernels.

    The context is held here: a context manager entered and then dropped would be closed by the
    garbage collector, restoring the vendor kernels behind the caller's back. Idempotent."""
    if not _ENTERED:
        _ENTERED.append(_FOR_THE_PROCESS.enter_context(portable_numerics()))
    return _ENTERED[0]


def run_portable(argv: Sequence[str]) -> int:
    """Run ``python argv...`` in a child process started with the portable settings; its exit
    code (its output goes straight to this process's)."""
    return subprocess.run([sys.executable, *argv], env=portable_env()).returncode


def in_portable_process() -> bool:
    """Whether this process was started with the portable settings (:func:`portable_env`)."""
    return all(os.environ.get(k) == v for k, v in _PORTABLE_VARIABLES.items())
