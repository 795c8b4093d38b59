"""An exclusive lock on a file beside the data it guards, for read-merge-write across processes.

Two processes that each read a results file, add their part and write it back lose one another's
part unless the whole read-merge-write runs under one lock. ``fcntl.flock`` is advisory (only
processes that take the lock are held back) and released by the kernel when the holder exits,
even on a crash, so a stale lock cannot block the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block,
    waiting for any other holder. POSIX only."""
    try:
        import fcntl
    except ImportError:  # Windows
        raise OSError(
            f"exclusive_lock({os.fspath(path)!r}) needs fcntl.flock, which this platform lacks"
        ) from None
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
