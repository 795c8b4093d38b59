"""Exact picks pinned on a fixture small enough to work out by hand (as apricot pins its
selections), so the fast selector and the literal references cannot drift together.

Rows (unit vectors in R^3) and weights w (beta = 1, no jitter), L = D K D:

    0: e1            w 1.0       3: (e1 + e2)/sqrt(2)  w 0.95
    1: e1 (a copy)   w 1.0       4: e3                 w 0.5
    2: e2            w 0.9

Greedy gains are w_i^2 times the squared distance of x_i from the span of the picks:
pick 1: w^2 = 1, 1, .81, .9025, .25 -> row 0 (a tie with its copy goes to the lower index);
pick 2: row 1 has 0 left, row 2 .81, row 3 .9025 x 1/2 = .45125, row 4 .25 -> row 2;
pick 3: rows 1 and 3 lie in span{e1, e2} (0 left), row 4 .25 -> row 4; then nothing is left.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpp_select import EarlyStopWarning, select
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import brute_force_greedy, dense_kernel, feature_greedy

ROWS = np.array(
    [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2**-0.5, 2**-0.5, 0.0], [0.0, 0.0, 1.0]]
)
WEIGHTS = np.array([1.0, 1.0, 0.9, 0.95, 0.5])
PICKS = [0, 2, 4]
GAINS = [1.0, 0.81, 0.25]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_selector_makes_the_hand_worked_picks(dtype, lazy, backend):
    res = greedy_dpp_result(
        ROWS.astype(dtype), 3, quality=WEIGHTS, beta=1.0, jitter=0.0, backend=backend, lazy=lazy
    )
    assert res.indices.tolist() == PICKS
    np.testing.assert_allclose(res.gains, GAINS, rtol=1e-12)


def test_the_references_make_the_hand_worked_picks():
    L = dense_kernel(ROWS, WEIGHTS, 0.0)
    assert brute_force_greedy(L, 3).tolist() == PICKS
    assert feature_greedy(ROWS, WEIGHTS, 3).tolist() == PICKS


def test_asking_for_a_fourth_pick_stops_early_with_the_same_three():
    with pytest.warns(EarlyStopWarning):
        res = greedy_dpp_result(ROWS, 4, quality=WEIGHTS, beta=1.0, jitter=0.0)
    assert res.indices.tolist() == PICKS


def test_select_with_relevance_one_everywhere_picks_for_diversity_alone():
    # Targets equal to every pool row give q = 1 for all: the weights are all 1, so the copy
    # (row 1) and the in-span diagonal (row 3) are never picked before e3 (row 4).
    res = select(ROWS, ROWS, k=3, beta=4.0, jitter=0.0)
    assert res.indices.tolist() == [0, 2, 4]
