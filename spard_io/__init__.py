"""What :mod:`spag_optim` and :mod:`dpp_select` share: strict JSON Lines reading, atomic writes, a
file lock for read-merge-write across processes, the distribution's version, and bounded
tokenisation of texts that are cut to N tokens.

Both packages read the same SPARD JSONL files (pools, fine-tuning sets, evaluation sets) and must
fail the same way on a malformed line, yet neither may import the other. This package is the one
home of that reading; it imports nothing from either.
"""

from .atomic import describe_write_error, discard_leftovers, write_atomic, write_atomic_files
from .jsonl import JSONLError, count_jsonl_rows, jsonl_writer, read_jsonl, write_jsonl
from .lock import exclusive_lock
from .tokens import token_prefix
from .version import distribution_version

__all__ = [
    "JSONLError",
    "describe_write_error",
    "discard_leftovers",
    "count_jsonl_rows",
    "distribution_version",
    "exclusive_lock",
    "jsonl_writer",
    "read_jsonl",
    "token_prefix",
    "write_atomic",
    "write_atomic_files",
    "write_jsonl",
]
