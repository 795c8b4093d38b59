"""An exclusive lock on a file beside the data it guards, for read-merge-write across processes.

Two processes that each read a results file, add their part and write it back lose one another's
part unless the whole read-merge-write runs under one lock. ``fcntl.flock`` is advisory (only
processes that take the lock are held back) and released by the kernel when the holder exits,
even on a crash, so a stale lock cannot block the next run. A live holder can: one stopped with
Ctrl-Z holds the lock until it is resumed. So the holder writes its process id into the lock file,
and a process that has to wait says so (a ``logging`` warning) with that id, and whether that
process is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

__all__ = ["exclusive_lock"]

logger = logging.getLogger(__name__)


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder wrote it into the lock file, and whether it is stopped."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return "another process"
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stopped = handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        stopped = False
    if stopped:
        return (
            f"process {pid}, which is stopped (Ctrl-Z): resume it (`fg` in its shell, or "
            f"`kill -CONT {pid}`) or end it"
        )
    return f"process {pid}"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block,
    waiting for any other holder, and saying who it waits for. POSIX only."""
    try:
        import fcntl
    except ImportError:  # Windows
        raise OSError(
            f"exclusive_lock({os.fspath(path)!r}) needs fcntl.flock, which this platform lacks"
        ) from None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("waiting for the lock %s, held by %s", os.fspath(path), _holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
