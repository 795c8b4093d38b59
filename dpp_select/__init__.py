"""Relevance-Diversity DPP selection of safe data (SPARD, ICML 2026).

``relevance_scores`` measures how close each pool item is to the fine-tuning task,
``greedy_dpp`` runs exact greedy MAP of the relevance-weighted DPP without ever forming the
N x N kernel, ``select`` wraps both (and the paper's baselines), and ``embed_texts`` produces the
mean-pooled hidden-state embeddings they work on.
"""

from spard_io import distribution_version

from .diagnostics import SelectionSummary
from .embed import embed_texts
from .greedy import EarlyStopWarning, NoRelevanceWarning, greedy_dpp
from .relevance import relevance_scores
from .selection import LowRelevanceWarning, SelectionResult, select

__version__ = distribution_version()

__all__ = [
    "EarlyStopWarning",
    "LowRelevanceWarning",
    "NoRelevanceWarning",
    "SelectionResult",
    "SelectionSummary",
    "embed_texts",
    "greedy_dpp",
    "relevance_scores",
    "select",
]
