"""relevance_scores and select: chunked relevance against a literal loop, and every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpp_select import relevance_scores, select
from dpp_select.reference import dense_kernel, feature_greedy


def _literal_relevance(pool: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.empty(len(pool))
    for i, x in enumerate(pool.astype(np.float64)):
        out[i] = max(float(x @ z) / (np.linalg.norm(x) * np.linalg.norm(z))
                     for z in target.astype(np.float64))
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
    np.testing.assert_allclose(relevance_scores(half, target.astype(np.float32)),
                               _literal_relevance(half.double().numpy(), target), atol=1e-5)


def test_relevance_blocks_over_targets_too(monkeypatch):
    import dpp_select.relevance as relevance

    monkeypatch.setattr(relevance, "_TARGET_BLOCK", 4)
    rng = np.random.default_rng(1)
    pool, target = rng.normal(size=(30, 5)), rng.normal(size=(11, 5))
    np.testing.assert_allclose(relevance_scores(pool, target, chunk_size=8),
                               _literal_relevance(pool, target), atol=1e-12)


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
    np.testing.assert_array_equal(diversity.indices,
                                  feature_greedy(pool, np.ones(200), 12, jitter=1e-6))
    # Gains are the determinant ratios of the reference kernel.
    L = dense_kernel(pool, np.maximum(q, 0) ** 4, 1e-6)
    idx = res.indices[:3]
    np.testing.assert_allclose(np.prod(res.gains[:3]), np.linalg.det(L[np.ix_(idx, idx)]),
                               rtol=1e-9)


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
    assert not np.array_equal(rand.indices,
                              select(pool, target, k=10, method="random", seed=4).indices)


def test_ratio_is_a_fraction_of_the_fine_tuning_set():
    pool, target = _data()
    assert select(pool, target, ratio=0.1, method="random").k == 3
    with pytest.raises(ValueError, match="exactly one of k"):
        select(pool, target)
    with pytest.raises(ValueError, match="exceeds the pool size"):
        select(pool, target, k=201)
    with pytest.raises(ValueError, match="unknown method"):
        select(pool, target, k=2, method="best")
