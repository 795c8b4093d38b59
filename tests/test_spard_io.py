"""spard_io: strict JSONL reading (every problem named by file and line while reading, not later)
and atomic writes that write through links, keep a file's permissions, write several files as one,
and say when the disk is full."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

import spard_io
from spard_io import JSONLError, read_jsonl, write_atomic


def lines(tmp_path, *texts):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"prompt": "a", "prompt": "b"}', r"rows\.jsonl:2: the key 'prompt' appears twice"),
        ('{"prompt": NaN}', r"rows\.jsonl:2: NaN is not JSON"),
        ('{"prompt": "a", "score": -Infinity}', r"rows\.jsonl:2: -Infinity is not JSON"),
        ('{"prompt": "\\ud800"}', r"rows\.jsonl:2: field 'prompt' holds a lone surrogate"),
        ('{"meta": {"note": ["\\udfff"]}}', r"rows\.jsonl:2: field 'meta' holds a lone surrogate"),
        ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", r"rows\.jsonl:2: nested too deeply"),
        ('{"prompt": "a", "n": ' + "9" * 5000 + "}", r"rows\.jsonl:2: .*digits"),
        ('{"prompt": "a", "x": 1e400}', r"rows\.jsonl:2: the number 1e400 is too large"),
    ],
    ids=[
        "duplicate_key",
        "nan",
        "infinity",
        "surrogate",
        "nested_surrogate",
        "deep",
        "long_int",
        "float_overflow",  # read as inf without a word
    ],
)
def test_what_json_does_not_allow_is_named_by_line_while_reading(tmp_path, text, match):
    """Each was read (the last duplicate winning, NaN as a float), failed much later with no file or
    line (a lone surrogate at the output, after embedding), or escaped as RecursionError/ValueError."""
    path = lines(tmp_path, '{"prompt": "fine"}', text)
    with pytest.raises(JSONLError, match=match):
        read_jsonl(path)


def test_valid_rows_still_read_as_they_are(tmp_path):
    path = lines(
        tmp_path, '{"prompt": "caf\\u00e9 \\ud83d\\ude00", "n": 12345678901234567890, "x": 1.5}'
    )
    assert read_jsonl(path) == [{"prompt": "café 😀", "n": 12345678901234567890, "x": 1.5}]


def test_a_write_goes_through_a_link_and_keeps_the_files_permissions(tmp_path):
    """The link used to be replaced by a regular file, and a 0600 file came back 0644."""
    target = tmp_path / "real" / "results.json"
    target.parent.mkdir()
    target.write_text("old")
    os.chmod(target, 0o600)
    link = tmp_path / "results.json"
    link.symlink_to(target)
    write_atomic(link, lambda handle: handle.write(b"new"))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_several_files_are_written_as_one(tmp_path):
    first, second = tmp_path / "rows.jsonl", tmp_path / "rows.indices.npy"
    first.write_text("old rows")
    second.write_text("old indices")

    def full_disk(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        spard_io.write_atomic_files([(first, lambda h: h.write(b"new rows")), (second, full_disk)])
    assert (first.read_text(), second.read_text()) == ("old rows", "old indices")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.indices.npy", "rows.jsonl"]
    spard_io.write_atomic_files(
        [(first, lambda h: h.write(b"new rows")), (second, lambda h: h.write(b"new indices"))]
    )
    assert (first.read_text(), second.read_text()) == ("new rows", "new indices")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_failed_write_is_described_for_a_person(code):
    text = spard_io.describe_write_error(OSError(code, os.strerror(code)))
    expected = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "disk quota",
        errno.EROFS: "read-only",
        errno.EACCES: os.strerror(errno.EACCES),
    }[code]
    assert expected in text


def test_leftovers_of_an_interrupted_write_are_discarded(tmp_path):
    """A write killed before its rename leaves ``.NAME.*.tmp`` beside the file."""
    path = tmp_path / "defense_sweep.json"
    path.write_text(json.dumps({"cells": {}}))
    (tmp_path / ".defense_sweep.json.abc123.tmp").write_text("partial")
    (tmp_path / ".other.json.abc123.tmp").write_text("another file's")
    spard_io.discard_leftovers(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.json.abc123.tmp",
        "defense_sweep.json",
    ]


def test_write_jsonl_refuses_what_read_jsonl_would_refuse_and_changes_nothing(tmp_path):
    """A NaN was written as bare NaN, which read_jsonl then refuses."""
    path = tmp_path / "out.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(ValueError, match=r"row 2: .*NaN or infinity"):
        spard_io.write_jsonl(path, [{"a": 2}, {"a": float("nan")}])
    assert path.read_text() == '{"a": 1}\n'
