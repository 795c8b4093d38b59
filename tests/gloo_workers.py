"""Launching a test's worker function on several CPU processes (gloo), without torchrun.

``run_workers(fn, world_size, tmp_path, *args)`` spawns ``world_size`` processes, initialises a gloo
process group in each through a file store (no ports), runs ``fn(rank, world_size, out_dir, *args)``
and returns after all have finished. Workers save what the test checks with ``torch.save`` under
``out_dir``; an exception in any worker fails the test with its traceback. A short collective
timeout turns a hang (ranks disagreeing on a collective) into an error instead of a stuck suite.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Long enough for a rank descheduled on a busy machine (with 45 s the DDP workers failed once in
# about ten runs on a shared 2-core box, most likely by this timeout: the log was not kept), short
# enough that a real hang fails the test instead of stalling the suite.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


def _entry(rank: int, world_size: int, init_file: str, out_dir: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        fn(rank, world_size, Path(out_dir), *args)
    finally:
        dist.destroy_process_group()


def run_workers(fn: Callable[..., None], world_size: int, tmp_path: Path, *args: Any) -> Path:
    """Run ``fn`` on ``world_size`` gloo ranks; returns the folder the workers wrote to."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    init_file = os.fspath(tmp_path / "rendezvous")
    mp.spawn(_entry, args=(world_size, init_file, os.fspath(out_dir), fn, args), nprocs=world_size, join=True)
    return out_dir
