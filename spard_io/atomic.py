"""Writes that never leave a file half written.

``write_atomic`` writes through a temporary file in the destination folder and renames it into
place, so an interrupted or failed write leaves the previous file (possibly an input) intact.
``write_atomic_files`` does that for several files as one: all are written before any is renamed
(an output and its index are never left from two different runs). A link is written through (its
target is replaced, the link stays) and an existing file keeps its permissions.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from typing import BinaryIO

__all__ = ["describe_write_error", "discard_leftovers", "write_atomic", "write_atomic_files"]

Writer = Callable[[BinaryIO], None]
_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: str) -> str:
    """What the temporary files of ``path`` start with (in its folder)."""
    return f".{os.path.basename(path)}."


def _mode(path: str) -> int:
    """The permissions ``path`` has, or those a new file gets (0666 less the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _staged(path: str, write: Writer) -> str:
    """``write`` into a temporary file beside ``path``, flushed to disk; returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=_SUFFIX, dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode(path))
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic_files(files: Sequence[tuple[str | os.PathLike, Writer]]) -> None:
    """Call each ``write(handle)`` on a temporary file next to its ``path``, then, only when every
    one is written, rename them into place in order. On any failure the temporary files are removed
    and every ``path`` is left as it was. A ``path`` that is a link is written through."""
    paths = [os.path.realpath(os.fspath(path)) for path, _ in files]
    staged: list[str] = []
    try:
        for path, (_, write) in zip(paths, files):
            staged.append(_staged(path, write))
        for tmp, path in zip(staged, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in staged:
            _unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, write: Writer) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``.

    A new file gets the usual permissions (0666 less the umask), an existing one keeps its own; a
    link is written through. On any failure the temporary file is removed and ``path`` is left as
    it was.
    """
    write_atomic_files([(path, write)])


def discard_leftovers(path: str | os.PathLike) -> None:
    """Remove the temporary files that writes of ``path`` killed before their rename left (a
    SIGKILL runs no cleanup). Call it only while no other process writes ``path`` (under its
    :func:`spard_io.exclusive_lock`)."""
    path = os.path.realpath(os.fspath(path))
    folder, prefix = os.path.dirname(path), _prefix(path)
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith(_SUFFIX):
            _unlink(os.path.join(folder, name))


def describe_write_error(err: OSError) -> str:
    """What went wrong in a failed write, for a person: a full disk or quota, a read-only file
    system, or the system's own words."""
    known = {
        errno.ENOSPC: "no space left on the device (the disk is full)",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
    }
    return known.get(err.errno, err.strerror or str(err))
