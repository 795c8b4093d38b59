"""Strict JSON Lines reading for the pools, fine-tuning sets and evaluation files.

One reader serves the ``dpp-select`` command, the examples and the evaluation loaders of
``spag_optim``, so a malformed file fails the same way everywhere: with the file, the 1-based line
number and what to fix, never with a silently shorter dataset.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO

from .atomic import write_atomic

__all__ = ["JSONLError", "count_jsonl_rows", "jsonl_writer", "read_jsonl", "write_jsonl"]


class JSONLError(ValueError):
    """A JSONL file that cannot be used as it is; the message names the file and line."""


class _Refused(ValueError):
    """Raised while parsing a line for what JSON itself does not allow; the message says what."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:  # json.loads would keep the last one without a word
            raise _Refused(f"the key {key!r} appears twice in one object; keep one")
        row[key] = value
    return row


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON (Python's extension); write null or a number")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # json.loads would read it as inf without a word
        raise _Refused(f"the number {text} is too large for a float; write it as a string")
    return value


def _lone_surrogate(value: Any) -> bool:
    """Whether a string in ``value`` holds a lone surrogate (a ``\\ud800`` escape): valid JSON
    that no UTF-8 text can hold, so it fails only when written."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(_lone_surrogate(v) for v in value)


def _parse(line: str, where: str) -> Any:
    """One line as JSON, or one JSONLError starting with ``where`` (file:line)."""
    try:  # without the line break, an error at the end of the line keeps its column
        row = json.loads(
            line.rstrip("\r\n"),
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
        )
    except _Refused as err:
        raise JSONLError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise JSONLError(
            f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
            "each line must hold one JSON object"
        ) from None
    except RecursionError:
        raise JSONLError(f"{where}: nested too deeply to read; flatten the row") from None
    except ValueError as err:  # an integer longer than Python converts (4300 digits)
        raise JSONLError(f"{where}: {err}; write such a number as a string") from None
    if isinstance(row, dict):
        for key, value in row.items():
            if _lone_surrogate(key) or _lone_surrogate(value):
                raise JSONLError(
                    f"{where}: field {key!r} holds a lone surrogate (an escape in \\ud800-\\udfff "
                    "without its pair), which no UTF-8 text can hold; fix or drop it"
                )
    return row


def count_jsonl_rows(path: str | os.PathLike) -> int:
    """Number of non-blank lines of ``path`` (the rows ``read_jsonl`` would return)."""
    path = _existing(path)
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return sum(
            1
            for lineno, line in enumerate(handle, start=1)
            if (line.removeprefix("\ufeff") if lineno == 1 else line).strip()
        )


def _existing(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise JSONLError(f"{path}: is a folder; pass the path of a .jsonl file")
    if not os.path.isfile(path):
        raise JSONLError(f"{path}: no such file; pass the path of a .jsonl file")
    return path


def read_jsonl(
    path: str | os.PathLike,
    required: Sequence[str] = (),
    span: tuple[int, int] | None = None,
    chosen_by: Mapping[str, str] | None = None,
) -> list[dict]:
    """Read ``path`` as one JSON object per line.

    Blank lines are skipped. Every other line must be a JSON object that has each key in
    ``required`` with a string value; otherwise :class:`JSONLError` names the line (and, for
    invalid JSON, the 1-based column). What JSON does not allow is refused on its line too: a
    key twice in one object, ``NaN``/``Infinity``, a lone surrogate escape, nesting deeper than
    Python reads, an integer longer than Python converts. ``chosen_by`` maps a required key to the option that
    chose it (e.g. ``{"prompt": "--pool-fields"}``), which a missing-field error then names.
    With ``span=(lo, hi)`` only rows lo..hi-1 (0-based, blank lines not counted) are parsed and
    returned: one process's shard of a file read by several.
    """
    path = _existing(path)
    lo, hi = (0, None) if span is None else span
    rows: list[dict] = []
    row_number = -1
    # surrogateescape keeps undecodable bytes visible per line, so the error can name the line.
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for lineno, line in enumerate(handle, start=1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as err:
                raise JSONLError(
                    f"{path}:{lineno}: not valid UTF-8 (byte "
                    f"0x{ord(line[err.start]) - 0xDC00:02x} at column {err.start + 1}); save the "
                    "file as UTF-8"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not part of the data
            if not line.strip():
                continue
            row_number += 1
            if row_number < lo:
                continue
            if hi is not None and row_number >= hi:
                break
            row = _parse(line, f"{path}:{lineno}")
            if not isinstance(row, dict):
                raise JSONLError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            for key in required:
                if key not in row:
                    option = (chosen_by or {}).get(key, "the right option")
                    raise JSONLError(
                        f"{path}:{lineno}: missing field {key!r} (fields present: "
                        f"{sorted(row)}); choose the fields with {option}"
                    )
                if not isinstance(row[key], str):
                    raise JSONLError(
                        f"{path}:{lineno}: field {key!r} must be a string, "
                        f"got {type(row[key]).__name__}"
                    )
            rows.append(row)
    return rows


def jsonl_writer(rows: Iterable[dict]) -> Callable[[BinaryIO], None]:
    """``write(handle)``: ``rows`` one JSON object per line (UTF-8, non-ASCII kept as is), for
    :func:`spard_io.write_atomic_files`."""

    def write(handle: BinaryIO) -> None:
        for number, row in enumerate(rows, start=1):
            try:  # what read_jsonl refuses is never written
                line = json.dumps(row, ensure_ascii=False, allow_nan=False)
            except ValueError as err:
                raise ValueError(f"row {number}: {err}; JSON has no NaN or infinity") from None
            handle.write((line + "\n").encode("utf-8"))

    return write


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write ``rows`` one JSON object per line (UTF-8, non-ASCII kept as is).

    The file is written under a temporary name and renamed into place, so a failure never leaves
    ``path`` half written.
    """
    write_atomic(path, jsonl_writer(rows))
