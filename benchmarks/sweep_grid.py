"""The defense sweep's grid: what a cell is, what identifies it, and the environments it runs in.

A cell is one method, attack preset, seed and aligned-model recipe, computed in one numeric
environment. Its key (:func:`cell_key`) holds a hash of everything the cell's data, aligned model
and method depend on, so a changed setting makes new cells instead of reusing stale ones. An
environment is a kernel setting (``native``, ``avx2``, ...) or ``portable`` (portable numerics,
``examples/_demo/numerics.py``); :func:`probe_environment` measures it in a fresh process, since the
kernel setting is read once per process, and :func:`environment_started` is what the sweep's workers are
started inside.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the demo's modules, examples/_demo

from _demo.alignment import cache_key  # noqa: E402
from _demo.config import SMOKE, DemoConfig, with_attack, with_recipe  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.methods import METHODS, Method  # noqa: E402
from _demo.numerics import portable_env  # noqa: E402

__all__ = ["cell_config", "cell_key", "environment_started", "method_spec", "probe_environment"]


def cell_config(attack: str, seed: int, smoke: bool, recipe: str = "base") -> DemoConfig:
    base = replace(SMOKE if smoke else DemoConfig(), seed=seed)
    return with_attack(with_recipe(base, recipe), attack)


def method_spec(method: Method) -> dict[str, Any]:
    """Everything that defines ``method``: a changed option (e.g. ``FIXED_ETA``) changes the key."""

    def name(fn: Any) -> str | None:
        return None if fn is None else getattr(fn, "__qualname__", type(fn).__qualname__)

    spec = {
        "selection": method.selection,
        "options": json.loads(json.dumps(method.options, sort_keys=True, default=repr)),
        "wrapper": name(method.wrapper),
        "mix_safe": method.mix_safe,
        "eval_prompt": name(method.eval_prompt),
        "adapter": method.adapter,
    }
    if method.safe_ratio is not None:  # only when set, so the stored cells' keys stay as they were
        spec["safe_ratio"] = method.safe_ratio
    return spec


def cell_key(
    method: str,
    attack: str,
    seed: int,
    environment: str,
    smoke: bool = False,
    recipe: str = "base",
    numerics: str = "native",
) -> str:
    """The resumption key: method, attack, seed, a hash of everything the cell's data, aligned
    model and method depend on (the recipe and numerics through the config and the aligned
    model's key), and the environment key (:func:`probe_environment`)."""
    digest = _config_hash(method, attack, seed, smoke, recipe, numerics)
    return f"{method}|{attack}|{seed}|{digest}|{environment}"


def _config_hash(method, attack, seed, smoke, recipe="base", numerics="native") -> str:
    config = cell_config(attack, seed, smoke, recipe)
    payload = json.dumps(
        {
            "config": config.to_dict(),
            "aligned": _aligned_key(attack, seed, smoke, recipe, numerics),
            "method": method_spec(METHODS[method]),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


@functools.cache
def _aligned_key(attack, seed, smoke, recipe="base", numerics="native") -> str:
    """The aligned model's cache key (builds the data once per attack, seed and recipe)."""
    config = cell_config(attack, seed, smoke, recipe)
    return cache_key(config, make_demo_data(config), numerics)


@contextlib.contextmanager
def environment_started(label: str) -> Iterator[None]:
    """The environment of ``label`` while processes start: ``ATEN_CPU_CAPABILITY`` set to it
    (unset for ``native``), or every portable setting for ``portable`` (``_demo/numerics.py``)."""
    before = dict(os.environ)
    os.environ.pop("ATEN_CPU_CAPABILITY", None)
    if label == "portable":
        os.environ.update(portable_env({}))
    elif label != "native":
        os.environ["ATEN_CPU_CAPABILITY"] = label
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def probe_environment(label: str, threads: int) -> dict[str, Any]:
    """The environment a worker started for ``label`` computes in, measured in a fresh process (the
    kernel setting is read once per process, so this one cannot switch)."""
    code = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(int(sys.argv[2]));"
        "from _demo.environment import numeric_environment; print(json.dumps(numeric_environment()))"
    )
    with environment_started(label):
        done = subprocess.run(
            [sys.executable, "-c", code, str(ROOT / "examples"), str(threads)],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise ValueError(
            f"environment {label!r} does not start: {done.stderr.strip().splitlines()[-1:]}"
        )
    environment = json.loads(done.stdout)
    expected = "default" if label == "portable" else label
    if label != "native" and environment["capability"].lower() != expected.lower():
        raise ValueError(
            f"environment {label!r}: ATEN_CPU_CAPABILITY={label} gives capability {environment['capability']!r}; "
            "use a kernel this CPU has (e.g. avx2), or native"
        )
    return environment
