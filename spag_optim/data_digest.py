"""A content hash of safe data held in memory, so a checkpoint can tell when it resumes over
other safe data.

:class:`~spag_optim.SafetyBatches` saves its position in the safe data (SPARD, ICML 2026,
Algorithm 1 draws a fresh safe batch every step); that position means nothing over other data.
:func:`data_digest` is a SHA-256 of a list's items (token rows, tensors, numbers, strings, nested
in dicts, lists and tuples), equal exactly when the contents are; None for anything else (a
``datasets.Dataset``, objects it cannot read), which is then identified by its length only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["data_digest"]


def data_digest(data: Any) -> str | None:
    """The hex SHA-256 of the items of ``data`` if it is a list or tuple of readable items (see
    the module docstring), else None. Read once per :class:`~spag_optim.SafetyBatches`."""
    if not isinstance(data, (list, tuple)):
        return None
    digest = hashlib.sha256()
    try:
        _feed(digest, data)
    except TypeError:
        return None
    return digest.hexdigest()


def _feed(digest: Any, item: Any) -> None:
    """Add ``item`` to ``digest``, tagged by kind so that e.g. ``1`` and ``"1"`` differ."""
    if isinstance(item, torch.Tensor):
        flat = item.detach().cpu().contiguous().reshape(-1)
        digest.update(f"t{item.dtype}{tuple(item.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(item, np.ndarray) and item.dtype != object:
        digest.update(f"a{item.dtype}{item.shape}".encode())
        digest.update(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, Mapping):
        digest.update(f"d{len(item)}".encode())
        for key in sorted(item, key=repr):
            _feed(digest, key)
            _feed(digest, item[key])
    elif isinstance(item, (list, tuple)):
        digest.update(f"l{len(item)}".encode())
        for value in item:
            _feed(digest, value)
    elif item is None or isinstance(item, (str, bytes, bool, int, float, np.generic)):
        text = repr(item).encode("utf-8", "surrogatepass")
        digest.update(f"v{len(text)}:".encode() + text)
    else:
        raise TypeError(type(item).__name__)
