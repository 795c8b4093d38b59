"""Output files that are checked before any work and never left half written.

``check_output`` runs before the expensive part of a command (embedding), so a missing folder or
an output that would overwrite an input fails in a second, not after an hour; ``write_outputs``
writes the selected rows and their indices as one pair (:func:`spard_io.write_atomic_files`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from spard_io import describe_write_error, jsonl_writer, write_atomic_files

__all__ = ["check_output", "check_distinct", "write_outputs"]


def check_output(path: str, option: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless a file can be written there."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a folder; give the path of a file to write")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: folder {folder} is not writable")


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:  # hard links and other aliases of an existing file
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(outputs: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, str]]) -> None:
    """Raise ``ValueError`` when an output ``(option, path)`` names the same file as another
    output or an input (compared after resolving links, and by inode for hard links)."""
    paths = list(outputs) + list(inputs)
    for i, (opt_a, a) in enumerate(outputs):
        for opt_b, b in paths[i + 1 :]:
            if _same(a, b):
                raise ValueError(
                    f"{opt_a} and {opt_b} are the same file ({a}); writing one would destroy "
                    "the other: choose another output path"
                )


def write_outputs(out: str, indices_out: str, rows: Iterable[dict], indices: np.ndarray) -> None:
    """The selected rows (JSONL, ``--out``) and their pool indices (.npy, ``--indices-out``) as one
    pair: both are written before either replaces its file, so a failure (a full disk) leaves the
    previous pair as it was. Raises OSError in one line that says why."""
    try:
        write_atomic_files(
            [
                (out, jsonl_writer(rows)),
                (indices_out, lambda handle: np.save(handle, indices, allow_pickle=False)),
            ]
        )
    except OSError as err:
        raise OSError(
            f"could not write --out {out} and --indices-out {indices_out}: "
            f"{describe_write_error(err)}; neither file was changed"
        ) from None
