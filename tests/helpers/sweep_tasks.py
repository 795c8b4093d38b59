"""Tasks for the sweep's worker processes (``benchmarks/sweep_workers.py``) in the tests: importable
by name in a spawned worker, each doing one thing a real cell may do (finish, fail, be killed)."""

from __future__ import annotations

import os
import signal
import time


def task(args: tuple[str, str]) -> tuple[str, int]:
    """``(key, what)``: ``ok`` returns (key, pid); ``die`` is SIGKILLed (as by the out-of-memory
    killer); ``raise`` raises ValueError; ``hang`` prints ``pid <n>`` and sleeps."""
    key, what = args
    if what == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "raise":
        raise ValueError(f"cell {key} is broken")
    if what == "hang":
        print(f"pid {os.getpid()}", flush=True)
        time.sleep(3600)
    return key, os.getpid()


def no_setup() -> None:
    """A worker initializer with nothing to set up."""


def run_hanging_workers() -> None:
    """Start two hanging workers and wait on them: what a test kills with SIGKILL (the benchmarks
    folder on ``sys.path``)."""
    from contextlib import nullcontext

    from sweep_workers import run_in_workers

    tasks = [("a", "hang"), ("b", "hang")]
    for _ in run_in_workers(
        [("native", tasks, 2)],
        task,
        initializer=no_setup,
        initargs=(),
        started_in=lambda _: nullcontext(),
    ):
        pass
