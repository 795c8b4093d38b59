"""The sweep's worker processes and its results file under failure: a worker killed mid-cell (as
by the out-of-memory killer) stops the sweep at once, naming the cell, instead of hanging it; a
killed sweep leaves no worker behind; a lock held by a stopped process is reported; a merge killed
before its rename leaves nothing behind for long. Tasks come from ``helpers.sweep_tasks``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sweep_workers import WorkerDied, run_in_workers

from helpers.sweep_tasks import no_setup, task

ROOT = Path(__file__).resolve().parent.parent
#: A hang guard only: every wait below ends in well under a second when the code is right.
GUARD_SECONDS = 120


def run(groups):
    return list(
        run_in_workers(
            groups,
            task,
            initializer=no_setup,
            initargs=(),
            started_in=lambda _: contextlib.nullcontext(),
        )
    )


def in_thread(fn):
    """Run ``fn`` in a daemon thread; return (result or exception, whether it finished)."""
    box = []
    thread = threading.Thread(target=lambda: box.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(GUARD_SECONDS)
    return (box[0] if box else None), not thread.is_alive()


def _outcome(fn):
    try:
        return fn()
    except BaseException as err:  # returned to the test
        return err


def test_every_task_is_run_once_across_groups():
    done = run([("native", [("a", "ok"), ("b", "ok"), ("c", "ok")], 2), ("avx2", [("d", "ok")], 1)])
    assert sorted(key for key, _ in done) == ["a", "b", "c", "d"]


def test_a_worker_killed_mid_cell_stops_the_run_naming_the_cell():
    """multiprocessing.Pool replaced the dead worker and never answered for its task: the sweep
    waited forever (seen at 39/40 cells)."""
    outcome, finished = in_thread(lambda: run([("native", [("a", "ok"), ("victim", "die")], 1)]))
    assert finished, "the run hung on a dead worker"
    assert isinstance(outcome, WorkerDied)
    assert "victim" in str(outcome) and "signal 9" in str(outcome) and "rerun" in str(outcome)


def test_a_cell_that_raises_stops_the_run_with_its_error():
    outcome, finished = in_thread(lambda: run([("native", [("bad", "raise"), ("b", "ok")], 2)]))
    assert finished and isinstance(outcome, ValueError) and "cell bad is broken" in str(outcome)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_do_not_outlive_a_killed_sweep():
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]; "
        "from helpers.sweep_tasks import run_hanging_workers; run_hanging_workers()"
    )
    sweep = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT / "benchmarks")],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids = [int(sweep.stdout.readline().split()[1]) for _ in range(2)]
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.wait()
    ended, finished = in_thread(lambda: _wait_until(lambda: not any(map(alive, pids))))
    for pid in pids:  # never leave them running, whatever the outcome
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert finished and ended is True, f"workers {pids} outlived the killed sweep"


def _wait_until(condition) -> bool:
    event = threading.Event()
    while not condition():
        event.wait(0.1)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_lock_held_by_a_stopped_process_is_reported_while_waiting(tmp_path):
    """A sweep whose merge lock was held by a stopped (Ctrl-Z) sweep waited with no message."""
    from spard_io import exclusive_lock

    lock = tmp_path / "defense_sweep.json.lock"
    code = (
        "import os, signal, sys; from spard_io import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1]):\n"
        "    print('held', flush=True); os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        _wait_until(lambda: not alive(holder.pid) or _state(holder.pid) == "T")
        reported, messages = threading.Event(), []

        class Seen(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())
                reported.set()

        logger = logging.getLogger("spard_io.lock")
        logger.addHandler(handler := Seen(logging.WARNING))
        try:
            waiter = threading.Thread(target=lambda: exclusive_lock(lock).__enter__(), daemon=True)
            waiter.start()
            assert reported.wait(GUARD_SECONDS)
        finally:
            logger.removeHandler(handler)
        message = messages[0]
        assert str(holder.pid) in message and "stopped" in message and "kill -CONT" in message
    finally:
        holder.kill()
        holder.wait()
    waiter.join(GUARD_SECONDS)
    assert not waiter.is_alive()  # the lock passed on once its holder was gone


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def test_a_merge_discards_what_a_merge_killed_before_its_rename_left(tmp_path):
    """A SIGKILL between the temporary file's write and its rename left it in the folder for good."""
    pytest.importorskip("transformers")
    import defense_sweep

    from helpers.sweep_cells import sweep_cell

    path = tmp_path / "defense_sweep.json"
    leftover = tmp_path / ".defense_sweep.json.k1ll3d.tmp"
    leftover.write_text('{"cells": {')
    run = {"id": "r", "cells": 1, "wall_seconds": 1.0, "workers": 1, "environments": ["e"]}
    state = defense_sweep._merge(path, {"sft|heavy|0|h|e": sweep_cell("sft", "heavy", 0, 1.0)}, run)
    assert list(state["cells"]) == ["sft|heavy|0|h|e"] and not leftover.exists()


def test_the_sweep_command_reports_a_dead_worker_in_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    import defense_sweep

    def dead(*args, **kwargs):
        raise WorkerDied("a worker died (signal 9) while running cell spard|heavy|0; rerun")
        yield  # a generator, like the real one

    monkeypatch.setattr(defense_sweep, "run_in_workers", dead)
    argv = ["--smoke", "--no-progress", "--methods", "sft", "--attacks", "heavy", "--seeds", "0"]
    assert defense_sweep.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "signal 9" in err and "spard|heavy|0" in err


def test_a_worker_whose_setup_fails_stops_the_run_with_that_error():
    """It surfaced as ConnectionResetError from the worker's pipe (hostile pass)."""

    def run_failing_setup():
        return list(
            run_in_workers(
                [("native", [("a", "ok")], 1)],
                task,
                initializer=int,  # int("x"): the setup raises ValueError
                initargs=("x",),
                started_in=lambda _: contextlib.nullcontext(),
            )
        )

    outcome, finished = in_thread(run_failing_setup)
    assert finished and isinstance(outcome, ValueError) and "invalid literal" in str(outcome)
