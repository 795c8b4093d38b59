"""Launching a test's worker function on several CPU processes (gloo), without torchrun.

``run_workers(fn, world_size, tmp_path, *args)`` spawns ``world_size`` processes, initialises a gloo
process group in each through a file store (no ports), runs ``fn(rank, world_size, out_dir, *args)``
and returns after all have finished. Workers save what the test checks with ``torch.save`` under
``out_dir``; an exception in any worker fails the test with its traceback. A short collective
timeout turns a hang (ranks disagreeing on a collective) into an error instead of a stuck suite.

Why a successful worker ends with ``os._exit(0)``: torch 2.13's gloo backend aborts at interpreter
exit in a fair share of runs ("terminate called without an active exception", SIGABRT), whether or
not ``destroy_process_group`` ran first: a C++ thread of the process group is still joinable when
its destructor runs during teardown. The work is done and saved by then, but ``mp.spawn`` reports
the signal as a failure. A 12-line DDP script aborted in 7 of 12 exits, 4 of 12 with a barrier
before ``destroy_process_group`` and 0 of 12 with ``os._exit(0)`` after its results were saved.
So each rank, once ``fn`` has returned, waits until every rank has returned (a counter in a
separate file store: no gloo traffic that a peer's exit could cut), flushes its streams and leaves
without running destructors. A worker that raises is not touched: ``mp.spawn`` records its traceback
before the process exits, so the test fails with the real error either way.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Long enough for a rank descheduled on a busy machine (with 45 s the DDP workers failed once in
# about ten runs on a shared 2-core box, most likely by this timeout: the log was not kept), short
# enough that a real hang fails the test instead of stalling the suite.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


def _wait_for_all_ranks(exit_file: str, world_size: int) -> None:
    """Block until every rank has called this (a file-store counter, independent of gloo)."""
    store = dist.FileStore(exit_file, world_size)
    store.set_timeout(COLLECTIVE_TIMEOUT)
    store.set(f"finished{dist.get_rank()}", "1")
    store.wait([f"finished{rank}" for rank in range(world_size)])


def _entry(
    rank: int,
    world_size: int,
    init_file: str,
    exit_file: str,
    out_dir: str,
    fn: Callable,
    args: tuple,
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    fn(rank, world_size, Path(out_dir), *args)
    _wait_for_all_ranks(exit_file, world_size)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_workers(fn: Callable[..., None], world_size: int, tmp_path: Path, *args: Any) -> Path:
    """Run ``fn`` on ``world_size`` gloo ranks; returns the folder the workers wrote to."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    init_file = os.fspath(tmp_path / "rendezvous")
    exit_file = os.fspath(tmp_path / "exit_barrier")
    mp.spawn(
        _entry,
        args=(world_size, init_file, exit_file, os.fspath(out_dir), fn, args),
        nprocs=world_size,
        join=True,
    )
    return out_dir
