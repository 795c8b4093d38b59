"""The numeric environment a result was computed in, recorded beside every sweep cell.

The same seed, commit and versions give different aligned models on CPUs with different vector
kernels (AVX-512 vs AVX2 change the order of floating-point sums, and stage 1 amplifies the
difference; issue "Evidence a user can reproduce"), so a number is only reproducible together with
the environment that produced it. :func:`numeric_environment` describes it; ``label`` is the
kernel setting a user chooses (``ATEN_CPU_CAPABILITY``, or ``native`` when it is unset: the
kernels PyTorch picks for this CPU; not ATen's own ``default``, its scalar kernels; ``portable``
for portable numerics, ``numerics.py``), and
:func:`environment_key` identifies it in a results file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch

from .numerics import in_portable_process

__all__ = ["numeric_environment", "environment_key", "VECTOR_FLAGS"]

#: The CPU flags that decide which of PyTorch's vector kernels can run.
VECTOR_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)


def _cpu() -> tuple[str, list[str]]:
    """(model name, the :data:`VECTOR_FLAGS` it has) from /proc/cpuinfo; the platform's processor
    string and no flags where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in text.splitlines())
        if value
    )
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), [f for f in VECTOR_FLAGS if f in flags]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def numeric_environment() -> dict[str, Any]:
    """What decides this process's floating-point results: CPU, vector kernels, versions, threads."""
    cpu, flags = _cpu()
    requested = os.environ.get("ATEN_CPU_CAPABILITY", "")
    return {
        "label": "portable" if in_portable_process() else requested.lower() or "native",
        "cpu": cpu,
        "cpu_flags": flags,
        "avx512": "avx512f" in flags,
        "ATEN_CPU_CAPABILITY": requested,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": sys.platform,
        "threads": torch.get_num_threads(),
    }


def environment_key(environment: dict[str, Any]) -> str:
    """``<label>-<capability>-<hash>``: readable, and distinct for any difference in the record."""
    digest = hashlib.sha256(json.dumps(environment, sort_keys=True).encode()).hexdigest()[:8]
    return f"{environment['label']}-{environment['capability']}-{digest}"
