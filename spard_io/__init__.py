"""File formats shared by :mod:`spag_optim` and :mod:`dpp_select`: strict JSON Lines reading,
atomic writes, and a file lock for read-merge-write across processes.

Both packages read the same SPARD JSONL files (pools, fine-tuning sets, evaluation sets) and must
fail the same way on a malformed line, yet neither may import the other. This package is the one
home of that reading; it imports nothing from either.
"""

from .atomic import write_atomic
from .jsonl import JSONLError, count_jsonl_rows, read_jsonl, write_jsonl
from .lock import exclusive_lock

__all__ = ["JSONLError", "count_jsonl_rows", "exclusive_lock", "read_jsonl", "write_atomic", "write_jsonl"]
