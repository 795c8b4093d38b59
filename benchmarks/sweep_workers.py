"""The defense sweep's worker processes: cells run in parallel, and no failure hangs the sweep or
outlives it.

``multiprocessing.Pool`` loses a task whose worker is killed (the out-of-memory killer sends
SIGKILL): it starts a new worker and never answers for the task, so a sweep waiting on its results
waits forever (seen on a 40-cell run that sat at 39/40). Here the sweep hands each worker its next
cell over the worker's own pipe and waits on every pipe and every worker's exit at once, so it
always knows which cell each worker runs: a worker that dies is named with its cell at once, the
other workers are stopped, and the cells already merged stay (a rerun resumes from them). A cell
that raises stops the sweep with its own error, as before. Each worker also watches its parent and
exits when the sweep is gone: a SIGKILL gives the sweep no chance to stop them.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["WorkerDied", "run_in_workers"]

#: How often a worker checks that the sweep that started it is still there (seconds).
PARENT_CHECK_SECONDS = 1.0


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its cell (killed, or crashed in C code)."""


def _exit_with(parent: int) -> None:
    """End this process as soon as its parent is gone (it is then adopted by another)."""
    tick = threading.Event()
    while os.getppid() == parent:
        tick.wait(PARENT_CHECK_SECONDS)
    os._exit(1)


def _worker(conn: Connection, run: Callable, initializer: Callable, initargs: tuple, parent: int):
    """Run the tasks the sweep sends until ``None``, answering each with its result or error."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    try:
        initializer(*initargs)
    except BaseException as err:  # the answer to its first task: the sweep raises it
        conn.recv()
        conn.send(("failed", _picklable(err)))
        return
    while (task := conn.recv()) is not None:
        try:
            conn.send(("done", run(task)))
        except BaseException as err:  # sent to the sweep, which raises it
            conn.send(("failed", _picklable(err)))


def _picklable(err: BaseException) -> BaseException:
    """``err`` if it crosses the pipe, else a RuntimeError that says what it was."""
    try:
        pickle.dumps(err)
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _died(process: Any, cell: str | None) -> WorkerDied:
    code = process.exitcode
    how = f"signal {-code}" if code < 0 else f"exit status {code}"
    doing = f"while running cell {cell}" if cell else "between cells"
    return WorkerDied(
        f"a worker process died ({how}; signal 9 is usually the out-of-memory killer) {doing}; the "
        "sweep stopped and every finished cell is saved: rerun the same command to resume (with "
        "fewer --workers if memory ran out)"
    )


def run_in_workers(
    groups: Sequence[tuple[str, Sequence[tuple], int]],
    run: Callable[[tuple], Any],
    *,
    initializer: Callable[..., None],
    initargs: tuple,
    started_in: Callable[[str], AbstractContextManager],
) -> Iterator[Any]:
    """``run(task)`` for every task, yielding each result as it arrives.

    ``groups``: ``(label, tasks, workers)``; each group's ``workers`` spawned processes start
    inside ``started_in(label)`` (the kernel setting they inherit) and run its tasks, whose first
    item names them (the cell key). Raises :class:`WorkerDied` when a worker ends without finishing
    its cell, or the cell's own error; either way every worker is stopped first.
    """
    context = multiprocessing.get_context("spawn")
    workers: dict[Connection, tuple[Any, deque]] = {}  # pipe -> (process, its group's tasks)
    running: dict[Connection, str | None] = {}
    try:
        for label, tasks, count in groups:
            todo = deque(tasks)
            with started_in(label):
                for _ in range(count):
                    conn, theirs = context.Pipe()
                    args = (theirs, run, initializer, initargs, os.getpid())
                    process = context.Process(target=_worker, args=args, daemon=True)
                    process.start()
                    theirs.close()
                    workers[conn] = (process, todo)
        for conn in workers:
            _hand_out(conn, workers, running)
        remaining = sum(len(tasks) for _, tasks, _ in groups)
        while remaining:
            active = [conn for conn, cell in running.items() if cell is not None]
            ready = set(wait([*active, *(workers[conn][0].sentinel for conn in active)]))
            for conn in active:
                process = workers[conn][0]
                if conn.poll():  # a result, an error, or the end of a pipe whose worker died
                    try:
                        kind, payload = conn.recv()
                    except (EOFError, OSError):  # its end closed (or reset) as it died
                        raise _died(_joined(process), running[conn]) from None
                    if kind == "failed":
                        raise payload
                    remaining, running[conn] = remaining - 1, None
                    yield payload
                    _hand_out(conn, workers, running)
                elif process.sentinel in ready:
                    raise _died(_joined(process), running[conn])
    finally:
        for process, _ in workers.values():
            if process.is_alive():
                process.terminate()
            process.join()


def _hand_out(conn: Connection, workers: dict, running: dict) -> None:
    """Send the worker on ``conn`` its group's next task, or ``None`` (stop) when there is none."""
    process, todo = workers[conn]
    task = todo.popleft() if todo else None
    try:
        conn.send(task)
    except OSError:  # its pipe is broken: the worker died after its last result
        raise _died(_joined(process), None) from None
    running[conn] = None if task is None else task[0]


def _joined(process: Any) -> Any:
    process.join()
    return process
