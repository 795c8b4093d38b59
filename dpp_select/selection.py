"""One entry point for SPARD's selection and the baselines of the paper's Tables 4-6.

``select`` turns pool and fine-tuning embeddings into a subset: it scores relevance once and then
applies the chosen method, so the ablations differ only in the rule that picks, never in the
preprocessing.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .diagnostics import RELATIVE_JITTER, SelectionSummary, relative_jitter, summarize_selection
from .distributed import agree_sizes, gather_quality
from .greedy import greedy_dpp_result
from .relevance import relevance_scores

__all__ = ["METHODS", "LowRelevanceWarning", "SelectionResult", "resolve_k", "select"]

METHODS = (
    "dpp",
    "dpp_diversity_only",
    "random",
    "top_relevance",
    "low_relevance",
    "high_relevance",
)
#: The keywords ``select`` passes unchanged to the DPP's greedy (their defaults are its own).
_GREEDY_OPTIONS = ("backend", "device", "lazy")


@dataclass(frozen=True)
class SelectionResult:
    """A selected subset of the pool.

    ``indices`` are pool row indices (int64) in selection order (greedy order for the DPP
    methods, decreasing/increasing relevance for the relevance methods, sampling order for the
    random ones); ``quality`` is q for every pool item; ``gains`` holds the DPP gain of each pick
    (None for the other methods); ``rescored`` counts float64 re-scorings in the DPP;
    ``summary`` describes the regime (q and weight quantiles, the jitter's share of the median
    w^2 and the picks it decided; see :class:`dpp_select.diagnostics.SelectionSummary`).
    """

    indices: np.ndarray
    quality: np.ndarray
    method: str
    k: int
    beta: float
    seed: int
    gains: np.ndarray | None = None
    rescored: int = 0
    summary: SelectionSummary | None = None


class LowRelevanceWarning(UserWarning):
    """The DPP ran where the jitter, not relevance and diversity, decides picks."""


def resolve_k(k: int | None, ratio: float | None, n_pool: int, n_target: int) -> int:
    """The number of items to select: ``k``, or ``ceil(ratio x n_target)``; checked against the
    pool size ``n_pool``."""
    if (k is None) == (ratio is None):
        raise ValueError(
            "give exactly one of k (number of items) or ratio (fraction of the "
            "fine-tuning set size)"
        )
    if ratio is not None:
        if isinstance(ratio, bool) or not (
            isinstance(ratio, numbers.Real) and 0 < ratio and math.isfinite(ratio)
        ):
            raise ValueError(f"ratio must be a positive number, got {ratio!r}")
        k = max(1, math.ceil(ratio * n_target - 1e-9))  # 0.03 * 8000 is 240.00000000000003
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n_pool:
        raise ValueError(
            f"k={k} exceeds the pool size N={n_pool}; lower k or ratio, or use a larger pool"
        )
    return int(k)


def _half_sample(order: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k items drawn uniformly from the first half of ``order`` (at least k items)."""
    head = order[: max(k, order.size // 2)]
    return rng.choice(head, size=k, replace=False).astype(np.int64)


def select(
    pool_emb: Any,
    target_emb: Any,
    k: int | None = None,
    ratio: float | None = None,
    method: str = "dpp",
    beta: float = 4.0,
    seed: int = 0,
    jitter: float | str = 1e-6,
    eps: float = 1e-10,
    process_group: Any = None,
    **greedy_options: Any,
) -> SelectionResult:
    """Select ``k`` pool items (or ``ceil(ratio x number of target items)``, SPARD's "3% of the
    fine-tuning set" being ``ratio=0.03``) for the fine-tuning task embedded in ``target_emb``.

    SPARD's rule (Sec. 4, Eq. 5-6) is ``method="dpp"``: relevance q_i = max cosine similarity
    of pool item i to the fine-tuning items, weights w = max(q, 0)^beta, and the exact greedy
    MAP of the DPP with kernel L = D K D + jitter I (K the pool's cosine similarity,
    D = diag(w)), which trades relevance against diversity. The other methods are the paper's
    baselines and ablations (Tables 4-6).

    Args:
        pool_emb: (N, d) embeddings of the candidate pool (NumPy array or torch tensor).
        target_emb: (M, d) embeddings of the fine-tuning set.
        k: number of items to select; give exactly one of ``k`` and ``ratio``.
        ratio: select ``ceil(ratio x M)`` items.
        method: ``dpp`` (relevance-weighted DPP), ``dpp_diversity_only`` (beta = 0),
            ``top_relevance`` (the k largest q; the beta -> infinity limit), ``random``
            (uniform), and Hsiung et al.'s similarity sets ``high_relevance`` /
            ``low_relevance``: k items drawn uniformly (seeded) from the more / less relevant
            half of the pool (from the k most / least relevant items when k exceeds half the
            pool). Relevance ties go to the lowest index.
        beta: relevance exponent of the DPP weights (default 4).
        seed: seed of the random methods.
        jitter: added to the kernel's diagonal. The default 1e-6 is the authors' constant,
            negligible next to weights of order 1 (their hidden states); ``"relative"`` uses
            1e-6 x the median positive w^2, the same share whatever the scale of q, and makes
            the picks invariant to rescaling the weights (``eps`` is then measured in that
            unit too).
        eps: the greedy stops early when the best gain falls below it.
        process_group: a ``torch.distributed`` group over which both inputs are sharded:
            ``pool_emb`` and ``target_emb`` are this rank's contiguous blocks, in rank order
            (``distributed.shard_range``). Every rank returns the same global ``indices`` as
            one process on the concatenated inputs, and ``quality`` for its own pool rows.
            Every rank passing the whole fine-tuning set is refused on every rank (``ratio``
            would count it once per rank), as is any argument that differs between ranks.
        **greedy_options: ``backend``, ``device`` and ``lazy``, passed unchanged with their
            defaults to :func:`~dpp_select.greedy.greedy_dpp` (see there). ``lazy=True`` runs
            the exact lazy greedy: the same picks and gains, usually a fraction of the work on
            large pools (also with ``process_group``).

    Returns:
        A :class:`SelectionResult`. When the jitter exceeds 1% of the median w^2 or of a
        pick's gain, or k exceeds the embedding dimension, a :class:`LowRelevanceWarning` says
        why and what to change (``result.summary.advice()``); ``result.summary`` also counts the
        distinct (not near-duplicate) picks.

    Example:
        >>> import numpy as np
        >>> from dpp_select import select
        >>> rng = np.random.default_rng(0)
        >>> pool, task = rng.normal(size=(500, 64)), rng.normal(size=(40, 64))
        >>> result = select(pool, task, ratio=0.25, jitter="relative")
        >>> result.indices.shape
        (10,)
    """
    unknown = sorted(set(greedy_options) - set(_GREEDY_OPTIONS))
    if unknown:
        raise TypeError(
            f"select() got unexpected keyword argument(s) {unknown}; besides its own "
            f"it takes only {', '.join(_GREEDY_OPTIONS)} (passed to greedy_dpp)"
        )
    if process_group is not None:
        n_pool, n_target = agree_sizes(
            process_group,
            len(pool_emb),
            target_emb,
            method=method,
            k=k,
            ratio=ratio,
            beta=beta,
            seed=seed,
            jitter=jitter,
            eps=eps,
            lazy=greedy_options.get("lazy", False),
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    quality = relevance_scores(pool_emb, target_emb, process_group=process_group)
    if process_group is None:
        n_pool, n_target = quality.size, len(target_emb)
    k = resolve_k(k, ratio, n_pool, n_target)
    if isinstance(beta, bool) or not (
        isinstance(beta, numbers.Real) and math.isfinite(beta) and beta >= 0
    ):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    dim = int(np.shape(pool_emb)[1])
    # Every q on every rank (N floats, small next to the embeddings): the relative jitter, the
    # summary and the relevance rules are about the whole pool.
    q = quality if process_group is None else gather_quality(quality, process_group)
    if method in ("dpp", "dpp_diversity_only"):
        b = 0.0 if method == "dpp_diversity_only" else beta
        return _select_dpp(
            pool_emb,
            quality,
            q,
            k,
            method,
            b,
            seed,
            jitter,
            eps,
            dim,
            process_group,
            greedy_options,
        )
    return _select_baseline(quality, q, k, n_pool, method, beta, seed, dim)


def _select_dpp(
    pool_emb: Any,
    quality: np.ndarray,
    q: np.ndarray,
    k: int,
    method: str,
    b: float,
    seed: int,
    jitter: float | str,
    eps: float,
    dim: int,
    process_group: Any,
    greedy_options: dict,
) -> SelectionResult:
    """The DPP methods: the exact greedy on weights max(q, 0)^b, then the summary and warning."""
    if isinstance(jitter, str):
        if jitter != "relative":
            raise ValueError(f"jitter must be a number >= 0 or 'relative', got {jitter!r}")
        w = np.power(np.maximum(q, 0.0), b)
        jitter = relative_jitter(w)
        eps = eps * jitter / RELATIVE_JITTER  # the same unit: the median positive w^2
    res = greedy_dpp_result(
        pool_emb,
        k,
        quality=quality,
        beta=b,
        jitter=jitter,
        eps=eps,
        process_group=process_group,
        **greedy_options,
    )
    summary = summarize_selection(
        method, q, b, int(res.indices.size), dim, res.gains, float(jitter), res.indices
    )
    if summary.low_relevance:
        warnings.warn(summary.advice(), LowRelevanceWarning, stacklevel=3)
    return SelectionResult(
        res.indices, quality, method, k, b, seed, res.gains, res.rescored, summary
    )


def _select_baseline(
    quality: np.ndarray,
    q: np.ndarray,
    k: int,
    n_pool: int,
    method: str,
    beta: float,
    seed: int,
    dim: int,
) -> SelectionResult:
    """The paper's baselines: by relevance rank, uniformly, or from one half of the pool."""
    rng = np.random.default_rng(seed)
    by_relevance = np.argsort(-q, kind="stable")
    if method == "top_relevance":
        idx = by_relevance[:k].astype(np.int64)
    elif method == "random":
        idx = rng.choice(n_pool, size=k, replace=False).astype(np.int64)
    elif method == "high_relevance":
        idx = _half_sample(by_relevance, k, rng)
    else:
        idx = _half_sample(np.argsort(q, kind="stable"), k, rng)
    summary = summarize_selection(method, q, beta, int(idx.size), dim)
    return SelectionResult(idx, quality, method, k, beta, seed, summary=summary)
