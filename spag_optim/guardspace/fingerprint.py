"""A fingerprint of the base weights a GuardSpace adapter was built on (arXiv 2510.14301, Sec. 3).

A saved adapter stores :math:`A_0, B_0` and rebuilds the frozen residual :math:`W' = W - A_0B_0P`
from the weight :math:`W` of the model it is loaded onto. On a different base with the same shapes
that succeeds silently and gives neither the base nor the trained model, so each adapted layer
records :func:`base_fingerprint` of its base Linear and loading compares it.

The fingerprint is a SHA-256 digest, so equal means equal bits, with no tolerance: of the shape and
of every entry of the weight (and bias), each rounded to bfloat16. Rounding float32 to bfloat16 is
deterministic (round to nearest even, on every device), so one checkpoint gives one fingerprint
loaded in float32 or in bfloat16; a bfloat16 (or float16) checkpoint gives it in every dtype that
holds its values exactly (float16: within its normal range). A float16 load of a float32
checkpoint rounds twice and may differ; ``load_guardspace(..., check_base=False)`` then loads with
a warning. Hashing every entry costs one pass over the weights (2 bytes each), little next to the
SVD of each weight that building the adapters takes. Files of format 2 recorded a strided sample of
at most :data:`SAMPLE_SIZE` entries per tensor (which missed a change to the entries between the
samples); they are checked with that sample (``sample=SAMPLE_SIZE``), as they were written.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

__all__ = ["base_fingerprint", "SAMPLE_SIZE"]

#: The entries per tensor that format-2 adapter files sampled for their fingerprints.
SAMPLE_SIZE = 4096


def _tensor_bytes(tensor: Tensor, sample: int | None) -> bytes:
    flat = tensor.detach().reshape(-1)
    if sample is not None:
        flat = flat[:: max(1, flat.numel() // sample)][:sample]
    return flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()


def base_fingerprint(linear: nn.Linear, *, sample: int | None = None) -> str:
    """The hex SHA-256 fingerprint of ``linear``'s weight and bias (see the module docstring);
    ``sample``: of that many strided entries per tensor only, as format-2 files recorded it."""
    digest = hashlib.sha256(repr(tuple(linear.weight.shape)).encode())
    digest.update(_tensor_bytes(linear.weight, sample))
    if linear.bias is not None:
        digest.update(b"bias")
        digest.update(_tensor_bytes(linear.bias, sample))
    return digest.hexdigest()
