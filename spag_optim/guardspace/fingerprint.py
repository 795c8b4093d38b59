"""A fingerprint of the base weights a GuardSpace adapter was built on (arXiv 2510.14301, Sec. 3).

A saved adapter stores :math:`A_0, B_0` and rebuilds the frozen residual :math:`W' = W - A_0B_0P`
from the weight :math:`W` of the model it is loaded onto. On a different base with the same shapes
that succeeds silently and gives neither the base nor the trained model, so each adapted layer
records :func:`base_fingerprint` of its base Linear and loading compares it.

The fingerprint is a SHA-256 digest, so equal means equal bits, with no tolerance: of the shape and
of an evenly strided sample of at most :data:`SAMPLE_SIZE` entries of the weight (and bias), each
rounded to bfloat16. Rounding float32 to bfloat16 is deterministic (round to nearest even, on every
device), so one checkpoint gives one fingerprint loaded in float32 or in bfloat16; a bfloat16 (or
float16) checkpoint gives it in every dtype that holds its values exactly (float16: within its
normal range). A float16 load of a float32 checkpoint rounds twice and may differ;
``load_guardspace(..., check_base=False)`` then loads with a warning. Another base, or a fine-tuned
copy of this one (which moves nearly every weight), differs in the sampled entries. Sampling keeps
it cheap on a 7B model (8 KB per tensor move to the CPU).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

__all__ = ["base_fingerprint", "SAMPLE_SIZE"]

#: At most this many entries of each tensor enter the fingerprint.
SAMPLE_SIZE = 4096


def _sample_bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE_SIZE)
    sample = flat[::step][:SAMPLE_SIZE].to(torch.bfloat16)
    return sample.view(torch.int16).cpu().numpy().tobytes()


def base_fingerprint(linear: nn.Linear) -> str:
    """The hex SHA-256 fingerprint of ``linear``'s weight and bias (see the module docstring)."""
    digest = hashlib.sha256(repr(tuple(linear.weight.shape)).encode())
    digest.update(_sample_bytes(linear.weight))
    if linear.bias is not None:
        digest.update(b"bias")
        digest.update(_sample_bytes(linear.bias))
    return digest.hexdigest()
