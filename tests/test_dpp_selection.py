"""relevance_scores and select: chunked relevance against a literal loop, and every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpp_select import relevance_scores, select

from helpers.dpp_reference import assert_gains_close, dense_kernel, feature_greedy


def _literal_relevance(pool: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.empty(len(pool))
    for i, x in enumerate(pool.astype(np.float64)):
        out[i] = max(
            float(x @ z) / (np.linalg.norm(x) * np.linalg.norm(z))
            for z in target.astype(np.float64)
        )
    return out


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_relevance_matches_a_literal_loop(chunk_size):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(40, 6))
    target = rng.normal(size=(9, 6))
    got = relevance_scores(pool, target, chunk_size=chunk_size)
    np.testing.assert_allclose(got, _literal_relevance(pool, target), rtol=0, atol=1e-12)
    got32 = relevance_scores(torch.from_numpy(pool).float(), target.astype(np.float32))
    np.testing.assert_allclose(got32, _literal_relevance(pool, target), atol=1e-5)
    assert got.dtype == np.float64
    half = torch.from_numpy(pool).to(torch.bfloat16)
    np.testing.assert_allclose(
        relevance_scores(half, target.astype(np.float32)),
        _literal_relevance(half.double().numpy(), target),
        atol=1e-5,
    )


def test_relevance_blocks_over_targets_too(monkeypatch):
    import dpp_select.relevance as relevance

    monkeypatch.setattr(relevance, "_TARGET_BLOCK", 4)
    rng = np.random.default_rng(1)
    pool, target = rng.normal(size=(30, 5)), rng.normal(size=(11, 5))
    np.testing.assert_allclose(
        relevance_scores(pool, target, chunk_size=8), _literal_relevance(pool, target), atol=1e-12
    )


def test_relevance_errors_name_the_problem():
    pool = np.ones((3, 4))
    with pytest.raises(ValueError, match="dimension 5 differs from 4"):
        relevance_scores(pool, np.ones((2, 5)))
    with pytest.raises(ValueError, match="target embeddings: rows 1 are all zero"):
        relevance_scores(pool, np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def _data():
    rng = np.random.default_rng(2)
    return rng.normal(size=(200, 10)), rng.normal(size=(30, 10))


def test_dpp_method_is_greedy_on_relevance_weights():
    pool, target = _data()
    res = select(pool, target, k=12, beta=4.0)
    q = _literal_relevance(pool, target)
    np.testing.assert_allclose(res.quality, q, atol=1e-12)
    expected = feature_greedy(pool, np.maximum(q, 0) ** 4, 12, jitter=1e-6)
    np.testing.assert_array_equal(res.indices, expected)
    assert res.method == "dpp" and res.k == 12 and res.gains.shape == (12,)
    diversity = select(pool, target, k=12, method="dpp_diversity_only")
    np.testing.assert_array_equal(
        diversity.indices, feature_greedy(pool, np.ones(200), 12, jitter=1e-6)
    )
    # Gains are the determinant ratios of the reference kernel.
    L = dense_kernel(pool, np.maximum(q, 0) ** 4, 1e-6)
    idx = res.indices[:3]
    np.testing.assert_allclose(
        np.prod(res.gains[:3]), np.linalg.det(L[np.ix_(idx, idx)]), rtol=1e-9
    )


def test_relevance_baselines():
    pool, target = _data()
    q = _literal_relevance(pool, target)
    order = np.argsort(-q, kind="stable")
    top = select(pool, target, k=10, method="top_relevance")
    np.testing.assert_array_equal(top.indices, order[:10])
    high = select(pool, target, k=10, method="high_relevance", seed=1)
    low = select(pool, target, k=10, method="low_relevance", seed=1)
    assert set(high.indices.tolist()) <= set(order[:100].tolist())
    assert set(low.indices.tolist()) <= set(order[100:].tolist())
    rand = select(pool, target, k=10, method="random", seed=3)
    again = select(pool, target, k=10, method="random", seed=3)
    np.testing.assert_array_equal(rand.indices, again.indices)
    assert len(set(rand.indices.tolist())) == 10
    assert not np.array_equal(
        rand.indices, select(pool, target, k=10, method="random", seed=4).indices
    )


def test_ratio_is_a_fraction_of_the_fine_tuning_set():
    pool, target = _data()
    assert select(pool, target, ratio=0.1, method="random").k == 3
    with pytest.raises(ValueError, match="exactly one of k"):
        select(pool, target)
    with pytest.raises(ValueError, match="exceeds the pool size"):
        select(pool, target, k=201)
    with pytest.raises(ValueError, match="unknown method"):
        select(pool, target, k=2, method="best")


def _literal_quantile(values: np.ndarray, p: float) -> float:
    """Linear interpolation between order statistics (numpy's default), written out."""
    s = sorted(float(v) for v in values)
    pos = p * (len(s) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _literal_gains(kernel: np.ndarray, picks: np.ndarray) -> list[float]:
    """det(L_{S+i}) / det(L_S) of each pick, from determinants."""
    gains, prev = [], 1.0
    for t in range(len(picks)):
        det = float(np.linalg.det(kernel[np.ix_(picks[: t + 1], picks[: t + 1])]))
        gains.append(det / prev)
        prev = det
    return gains


def test_summary_matches_a_literal_computation():
    from dpp_select.diagnostics import QUANTILES

    rng = np.random.default_rng(21)
    pool = rng.normal(size=(60, 10))
    target = rng.normal(size=(4, 10))
    jitter = 2e-4
    with pytest.warns(UserWarning):  # low relevance on purpose: the counts are not all zero
        res = select(pool, target, k=14, beta=3.0, jitter=jitter)
    q = _literal_relevance(pool, target)
    w = np.array([max(v, 0.0) ** 3 for v in q])
    s = res.summary
    assert list(s.quality_quantiles) == list(QUANTILES) == [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1]
    for p in QUANTILES:
        assert s.quality_quantiles[p] == pytest.approx(_literal_quantile(q, p), abs=1e-12)
        assert s.weight_quantiles[p] == pytest.approx(_literal_quantile(w, p), abs=1e-12)
    assert s.zero_weights == sum(1 for v in q if v <= 0)
    assert s.jitter == jitter
    assert s.jitter_share == pytest.approx(jitter / _literal_quantile(w * w, 0.5), rel=1e-9)
    gains = _literal_gains(dense_kernel(pool, w, jitter), res.indices)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-6)
    assert s.jitter_scale_picks == sum(1 for g in gains if jitter >= 0.01 * g)
    assert 0 < s.jitter_scale_picks < 14
    assert (s.picks, s.dim, s.beta, s.method) == (14, 10, 3.0, "dpp")
    random = select(pool, target, k=5, method="random").summary
    assert random.jitter is None and random.jitter_share is None and not random.low_relevance
    assert random.quality_quantiles == s.quality_quantiles


def _near_targets(rng, n, d, targets):
    """Pool items close to the targets, so relevance is high (q > 0.9) as in the paper."""
    return targets[rng.integers(0, len(targets), n)] + 0.1 * rng.normal(size=(n, d))


def test_low_relevance_warning_fires_and_stays_silent_when_it_should():
    import warnings

    from dpp_select import LowRelevanceWarning

    rng = np.random.default_rng(22)
    d = 48
    target = rng.normal(size=(5, d))
    unrelated = rng.normal(size=(300, d))  # q around 0.3: w = q^4 ~ 1e-2, the jitter matters
    with pytest.warns(LowRelevanceWarning, match=r"relevance is low.*lower beta.*'relative'"):
        low = select(unrelated, target, k=10)
    assert low.summary.low_relevance and low.summary.jitter_share > 1e-2
    assert low.summary.advice() is not None
    related = _near_targets(rng, 300, d, target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        high = select(related, target, k=10)
        rel = select(unrelated, target, k=10, jitter="relative")
        select(unrelated, target, k=10, method="top_relevance")
    assert high.summary.quality_quantiles[0.5] > 0.9 and not high.summary.low_relevance
    assert high.summary.advice() is None and not rel.summary.low_relevance
    # More picks than dimensions: the jitter decides the rest, whatever the relevance.
    with pytest.warns(LowRelevanceWarning, match="exceeds the embedding dimension 48"):
        select(related, target, k=60)


def test_relative_jitter_is_a_millionth_of_the_median_weight_squared():
    rng = np.random.default_rng(23)
    pool = rng.normal(size=(80, 16))
    target = rng.normal(size=(3, 16))
    res = select(pool, target, k=8, beta=2.0, jitter="relative")
    q = _literal_relevance(pool, target)
    w = np.maximum(q, 0.0) ** 2
    jitter = 1e-6 * _literal_quantile(w[w > 0] ** 2, 0.5)
    assert res.summary.jitter == pytest.approx(jitter, rel=1e-12)
    np.testing.assert_array_equal(res.indices, feature_greedy(pool, w, 8, jitter=jitter))
    with pytest.raises(ValueError, match="'relative'"):
        select(pool, target, k=8, jitter="absolute")


def test_lazy_selection_equals_the_full_pass_and_the_reference():
    pool, target = _data()
    full = select(pool, target, k=12, beta=4.0)
    lazy = select(pool, target, k=12, beta=4.0, lazy=True)
    np.testing.assert_array_equal(lazy.indices, full.indices)
    assert_gains_close(lazy.gains, full.gains)  # re-scored in other blocks
    q = _literal_relevance(pool, target)
    np.testing.assert_array_equal(
        lazy.indices, feature_greedy(pool, np.maximum(q, 0) ** 4, 12, jitter=1e-6)
    )
    with pytest.raises(ValueError, match="lazy"):
        select(pool, target, k=3, lazy="yes")


def test_backend_device_and_lazy_reach_the_greedy_and_a_misspelt_keyword_is_refused():
    pool, target = _data()
    via_select = select(pool, target, k=6, beta=4.0, backend="numpy", device=None, lazy=True)
    np.testing.assert_array_equal(via_select.indices, select(pool, target, k=6, beta=4.0).indices)
    with pytest.raises(ValueError, match="backend"):
        select(pool, target, k=3, backend="cuda")  # passed on: greedy_dpp's own check answers
    for method in ("dpp", "random"):  # refused even where no DPP runs
        with pytest.raises(TypeError, match="lazzy.*backend, device, lazy"):
            select(pool, target, k=3, method=method, lazzy=True)


def _near_duplicate_pool(rng, groups: int, copies: int, d: int):
    """``groups`` random directions, each ``copies`` times with 1e-5 noise; the targets are the
    directions themselves, so relevance is close to 1 as in the paper."""
    centres = rng.normal(size=(groups, d))
    target = centres
    pool = np.repeat(centres, copies, axis=0) + 1e-5 * rng.normal(size=(groups * copies, d))
    return pool, target


def test_near_duplicate_picks_are_counted_and_the_warning_says_what_to_do():
    """Picks beyond the pool's distinct directions are near-duplicates decided by the jitter:
    the summary counts the distinct ones and the warning gives advice for that case too."""
    from dpp_select import LowRelevanceWarning

    rng = np.random.default_rng(23)
    pool, target = _near_duplicate_pool(rng, groups=5, copies=10, d=32)
    with pytest.warns(LowRelevanceWarning) as caught:
        res = select(pool, target, k=8)
    s = res.summary
    assert s.jitter_share < 1e-2 and s.picks <= s.dim  # neither other cause applies
    assert s.jitter_scale_picks == 3
    assert s.distinct_picks == 5
    assert "5 of 8 picks" in s.format() and "distinct" in s.format()
    message = str(caught[0].message)
    assert "near-duplicates" in message and "deduplicate the pool" in message
    assert "ask for at most 5 items" in message


def test_distinct_picks_match_a_literal_angle_to_the_earlier_picks():
    """A pick is distinct when at least 1% of its kernel norm L_ii lies outside the span of the
    earlier picks: its gain det(L_S+i)/det(L_S) >= 0.01 L_ii (the literal determinants)."""
    rng = np.random.default_rng(24)
    pool, target = _near_duplicate_pool(rng, groups=4, copies=6, d=16)
    pool[:12] += 0.02 * rng.normal(size=(12, 16))  # two groups spread out a little
    with pytest.warns(UserWarning):
        res = select(pool, target, k=10, jitter=1e-5)
    q = _literal_relevance(pool, target)
    w = np.maximum(q, 0.0) ** 4.0
    kernel = dense_kernel(pool, w, 1e-5)
    gains = _literal_gains(kernel, res.indices)
    expected = sum(1 for i, g in zip(res.indices, gains) if g >= 0.01 * kernel[i, i])
    assert res.summary.distinct_picks == expected
    assert 4 <= expected < 10
    assert select(pool, target, k=3, method="random").summary.distinct_picks is None
