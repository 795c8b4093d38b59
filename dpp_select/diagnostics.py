"""What regime a selection ran in: relevance, weights, and how much the jitter decided.

SPARD's kernel is L = D K D + j I with D = diag(w), w_i = max(q_i, 0)^beta, and the
authors' constant jitter j = 1e-6. On the paper's LLM hidden states most relevance scores q are
above 0.9, so w^2 is of order 1 and the jitter is a millionth of it. With other features (e.g.
sentence embeddings, q around 0.3) w = q^4 is of order 1e-2, w^2 of order 1e-4, and the same
jitter is a few percent of a typical w^2: relevance no longer dominates the kernel's diagonal.

Every candidate's greedy gain is j plus a relevance-diversity part ||f_i||^2 - sum_t (f_i . a_t)^2
>= 0 (f_i = w_i x_i / ||x_i||, a_t the feature part of the picks' orthonormal basis). A pick whose
gain is at most 100 j, so that the jitter is at least 1% of it, was *decided at jitter scale*:
candidates within a percent of each other may swap because of the jitter. That also happens in
the paper's regime once more items are picked than the embeddings have dimensions, because the
feature space is then exhausted and every remaining gain is a few times j, and in any regime once
the pool's distinct directions are used up: the candidates left are near-duplicates of the picks.

Diversity of the picks: pick i's gain is the squared distance of its kernel feature phi_i (with
||phi_i||^2 = L_ii) from the span of the earlier picks' features, so gain_i / L_ii is the squared
sine of the angle between phi_i and that span. A pick with gain_i >= 1% of L_ii (an angle above
about 5.7 degrees) adds a direction of its own; one below is a near-duplicate of the earlier picks.
``distinct_picks`` counts the former: the number of near-duplicate groups among the picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "QUANTILES",
    "SelectionSummary",
    "summarize_selection",
    "relative_jitter",
    "DISTINCT_SHARE",
    "JITTER_SHARE_WARN",
    "RELATIVE_JITTER",
]

#: Probabilities of the quantiles reported for q and w (linear interpolation, numpy's default).
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
#: A jitter above this share of the median w^2 (or of a pick's gain) is reported as the
#: low-relevance regime: 10,000 times the paper's, where w^2 is of order 1 and the jitter 1e-6.
JITTER_SHARE_WARN = 1e-2
#: A pick whose gain is below this share of its L_ii lies within about 5.7 degrees of the span of
#: the earlier picks: a near-duplicate of them.
DISTINCT_SHARE = 1e-2
#: ``jitter="relative"`` uses this multiple of the median positive w^2: the authors' constant
#: 1e-6, measured against weights of order 1 as in the paper.
RELATIVE_JITTER = 1e-6


def relative_jitter(weights: np.ndarray) -> float:
    """``RELATIVE_JITTER`` x the median of w^2 over items with w > 0 (1e-6 when none is).

    This keeps the jitter's share of a typical w^2 at the paper's level whatever the scale of
    the relevance scores, and makes the DPP's picks invariant to rescaling all weights.
    """
    positive = weights[weights > 0]
    if positive.size == 0:
        return RELATIVE_JITTER
    return RELATIVE_JITTER * float(np.median(positive * positive))


@dataclass(frozen=True)
class SelectionSummary:
    """Diagnostics of one selection.

    ``quality_quantiles`` and ``weight_quantiles`` map each probability in :data:`QUANTILES` to
    the quantile of q and of w = max(q, 0)^beta over the pool; ``zero_weights`` counts items with
    w = 0. For the DPP methods, ``jitter`` is the jitter used, ``jitter_share`` is
    jitter / median(w^2) (inf when that median is 0) and ``jitter_scale_picks`` counts picks
    whose gain was at most 100 x jitter (the jitter at least 1% of it), and ``distinct_picks``
    counts picks whose gain is at least 1% of their L_ii, i.e. that are not near-duplicates of
    the earlier picks (see the module docstring); they are None for the other methods. ``dim``
    is the embedding dimension.
    """

    method: str
    beta: float
    picks: int
    dim: int
    quality_quantiles: dict[float, float]
    weight_quantiles: dict[float, float]
    zero_weights: int
    jitter: float | None = None
    jitter_share: float | None = None
    jitter_scale_picks: int | None = None
    distinct_picks: int | None = None

    @property
    def low_relevance(self) -> bool:
        """Whether the jitter, rather than relevance and diversity, weighs on the picks."""
        if self.jitter_share is None:
            return False
        return (
            self.jitter_share > JITTER_SHARE_WARN
            or bool(self.jitter_scale_picks)
            or self.picks > self.dim
        )

    def advice(self) -> str | None:
        """What to do about the regime, or None when relevance and diversity decide the picks."""
        if not self.low_relevance:
            return None
        parts = []
        if self.jitter_share > JITTER_SHARE_WARN:
            q50, w50 = self.quality_quantiles[0.5], self.weight_quantiles[0.5]
            share = (
                f"{100 * self.jitter_share:.3g}% of the median w^2"
                if math.isfinite(self.jitter_share)
                else "above the median w^2, which is 0"
            )
            parts.append(
                f"relevance is low for the DPP: median q {q50:.3g}, median w = q^{self.beta:g} "
                f"{w50:.3g}, and the jitter {self.jitter:.3g} is {share}, so it weighs on the "
                "picks. Embed with the fine-tuned model's own hidden states as the paper does "
                "(its q are mostly above 0.9), lower beta (e.g. 1), or use jitter='relative' "
                "(--jitter relative: 1e-6 x the median w^2, the authors' 1e-6 measured against "
                "weights near 1)"
            )
        if self.jitter_scale_picks:
            parts.append(self._jitter_scale_advice())
        if self.picks > self.dim:
            parts.append(
                f"k={self.picks} exceeds the embedding dimension {self.dim}, so the "
                f"picks after the first {self.dim} are decided by the jitter whatever "
                "the weights: select fewer items or use larger embeddings"
            )
        return "; ".join(parts)

    def _jitter_scale_advice(self) -> str:
        """Why picks were decided at jitter scale, and what to do, whatever the cause."""
        text = (
            f"{self.jitter_scale_picks} of {self.picks} picks were decided at jitter scale "
            "(the jitter is at least 1% of their gain)"
        )
        if self.jitter_share > JITTER_SHARE_WARN or self.picks > self.dim:
            return f"{text}, which the advice on the relevance or the dimension here addresses"
        duplicates = self.picks - self.distinct_picks
        if duplicates:
            return (
                f"{text}: {duplicates} picks are near-duplicates of earlier ones (only "
                f"{self.distinct_picks} of {self.picks} picks are distinct), so the jitter "
                "chose among copies; deduplicate the pool, or ask for at most "
                f"{self.distinct_picks} items"
            )
        return (
            f"{text}: their relevance-diversity gain is within 100 x the jitter; lower the "
            "jitter (e.g. --jitter relative) or ask for fewer items"
        )

    def format(self) -> str:
        """A few lines for people: quantiles of q and w, and the jitter's weight."""

        def row(values: dict[float, float]) -> str:
            return "  ".join(f"{_label(p)} {v:.3g}" for p, v in values.items())

        lines = [
            f"relevance q: {row(self.quality_quantiles)}",
            f"weights w = max(q,0)^{self.beta:g}: {row(self.weight_quantiles)}"
            f"  (w = 0: {self.zero_weights})",
        ]
        if self.jitter is not None:
            share = "inf" if math.isinf(self.jitter_share) else f"{self.jitter_share:.3g}"
            lines.append(
                f"jitter {self.jitter:.3g} = {share} x median w^2; picks decided at "
                f"jitter scale: {self.jitter_scale_picks} of {self.picks}"
            )
            lines.append(
                f"diversity: {self.distinct_picks} of {self.picks} picks distinct "
                "(not near-duplicates of earlier picks)"
            )
        return "\n".join(lines)


def _label(p: float) -> str:
    return {0.0: "min", 0.5: "median", 1.0: "max"}.get(p, f"p{round(100 * p):02d}")


def summarize_selection(
    method: str,
    quality: np.ndarray,
    beta: float,
    picks: int,
    dim: int,
    gains: np.ndarray | None = None,
    jitter: float | None = None,
    indices: np.ndarray | None = None,
) -> SelectionSummary:
    """The :class:`SelectionSummary` of a selection (``gains``, ``jitter`` and the picks'
    ``indices`` for the DPP)."""
    q = np.asarray(quality, dtype=np.float64)
    w = np.power(np.maximum(q, 0.0), float(beta))
    qq = dict(zip(QUANTILES, np.quantile(q, QUANTILES).tolist()))
    wq = dict(zip(QUANTILES, np.quantile(w, QUANTILES).tolist()))
    zero = int(np.count_nonzero(w == 0.0))
    if gains is None or jitter is None:
        return SelectionSummary(method, float(beta), picks, dim, qq, wq, zero)
    median_w2 = float(np.median(w * w))
    share = jitter / median_w2 if median_w2 > 0 else (math.inf if jitter > 0 else 0.0)
    gains = np.asarray(gains)
    at_jitter = int(np.count_nonzero(JITTER_SHARE_WARN * gains <= jitter))
    diagonal = w[np.asarray(indices, dtype=np.int64)] ** 2 + jitter  # L_ii of each pick
    distinct = int(np.count_nonzero(gains >= DISTINCT_SHARE * diagonal))
    return SelectionSummary(
        method, float(beta), picks, dim, qq, wq, zero, float(jitter), share, at_jitter, distinct
    )
