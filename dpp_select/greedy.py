"""Exact greedy MAP inference for the relevance-weighted DPP (SPARD Eq. 6; Chen et al. 2018).

``greedy_dpp`` and ``greedy_dpp_result`` check the arguments and choose the path: the full-pass
greedy (its bookkeeping on the device for the torch backend, ``device_pass.py``), the lazy greedy
(``lazy.py``) or, with a ``process_group``, the greedy over a sharded pool (``distributed.py``).
All share the kernel in ``kernel.py``, whose docstring gives
the feature-space formulation, why the float32 passes stay exact, and the tie rule.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from .distributed import sharded_greedy
from .engine.device_pass import full_pass_greedy
from .engine.kernel import (
    EarlyStopWarning,
    GreedyInputs,
    GreedyResult,
    NoRelevanceWarning,
    check_scalars,
    dpp_weights,
    make_pass,
)
from .engine.lazy import run_lazy

__all__ = [
    "EarlyStopWarning",
    "GreedyResult",
    "NoRelevanceWarning",
    "greedy_dpp",
    "greedy_dpp_result",
    "dpp_weights",
]


def greedy_dpp_result(
    emb: Any,
    k: int,
    quality: Any = None,
    beta: float = 1.0,
    jitter: float = 0.0,
    eps: float = 1e-10,
    backend: str = "auto",
    device: Any = None,
    lazy: bool = False,
    process_group: Any = None,
) -> GreedyResult:
    """:func:`greedy_dpp` returning gains, the float64 re-scoring count and the work as well."""
    if not isinstance(lazy, bool):
        raise ValueError(f"lazy must be True or False, got {lazy!r}")
    if process_group is not None:
        return sharded_greedy(
            emb, k, quality, beta, jitter, eps, backend, device, process_group, lazy
        )
    xpass, norms = make_pass(emb, backend, device)
    check_scalars(k, jitter, eps)
    if k > xpass.n:
        raise ValueError(
            f"k={k} exceeds the pool size N={xpass.n}; ask for at most {xpass.n} items"
        )
    w = dpp_weights(quality, xpass.n, beta)
    inputs = GreedyInputs(xpass, norms, w, int(k), float(jitter), float(eps))
    return run_lazy(inputs) if lazy else full_pass_greedy(inputs)


def greedy_dpp(*args: Any, **kwargs: Any) -> np.ndarray:
    """Greedy MAP of the DPP with L = D K D + jitter I, K = cosine similarity, D = diag(w).

    Returns the selected row indices (int64) in greedy order: each pick maximises
    det(L_{S+i}) / det(L_S) exactly as an exact float64 greedy would (lowest index on exact
    ties). Stops at ``k`` items, or earlier with an :class:`EarlyStopWarning` when the best gain
    falls below ``eps``. ``backend='numpy'`` runs BLAS on the CPU; ``'torch'`` runs the pass on
    the tensor's device (or ``device``); ``'auto'`` follows the input type.

    Tolerance: picks are exact for the embeddings as stored. float16/bfloat16 tensors (torch
    backend) are exact for their rounded values, which differ from float32 embeddings by up to
    2^-11 (float16) or 2^-8 (bfloat16) relative per entry, so picks whose gains differ by less
    than about that fraction may change against a float32 run.

    ``lazy=True`` brings forward, at each step, only the candidates whose stale gain (an upper
    bound, since gains never increase) could still win, falling back to a full pass whenever
    that would cost more (see ``lazy.py``): identical picks and gains, less work on data whose
    gains spread out (isotropic or real-text embeddings), about the same on data where nearly
    every candidate stays close to the best.

    With a ``process_group`` (``torch.distributed``), ``emb`` and ``quality`` are this rank's
    contiguous shard of the pool (shards in rank order, sizes may differ); every rank gets the
    same *global* indices, equal to one process's picks on the concatenated pool (see
    ``distributed.py``); ``lazy`` combines with it (every rank must pass the same value).
    """
    return greedy_dpp_result(*args, **kwargs).indices


# The parameters are stated once, on greedy_dpp_result; help() and the docs show them here too.
greedy_dpp.__signature__ = inspect.signature(greedy_dpp_result).replace(
    return_annotation="np.ndarray"
)
