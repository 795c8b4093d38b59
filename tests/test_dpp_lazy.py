"""greedy_dpp(lazy=True) against brute-force determinants and the exact float64 greedy."""

from __future__ import annotations

import contextlib
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dpp_select.lazy as lazy_mod
from dpp_select import EarlyStopWarning, greedy_dpp
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import brute_force_greedy, dense_kernel, feature_greedy
from helpers.greedy_grid import GREEDY_GRID

# Constants small enough that a dozen candidates already use several blocks, batches and
# pool rebuilds; and a zero budget, which sends every step to the full-pass fallback.
TINY = {"_BLOCK": 3, "_FIRST_BATCH": 1, "_MIN_POOL": 2, "_SAMPLE": 4}
SETTINGS = {"default": {}, "tiny": TINY, "fallback": {**TINY, "_BUDGET": 0.0}}


def _run(x, k, setting="default", **kwargs):
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", EarlyStopWarning)
        if SETTINGS[setting]:
            stack.enter_context(mock.patch.multiple(lazy_mod, **SETTINGS[setting]))
        return greedy_dpp_result(x, k, lazy=True, **kwargs)


def determinant_gains(L: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """det(L_{S+i}) / det(L_S) along the picks, from log-determinants of the principal minors."""
    logdets = [0.0] + [
        np.linalg.slogdet(L[np.ix_(picks[:t], picks[:t])])[1] for t in range(1, len(picks) + 1)
    ]
    return np.exp(np.diff(logdets))


@settings(max_examples=80, deadline=None)
@given(**GREEDY_GRID, duplicates=st.booleans())
def test_lazy_matches_brute_force_determinants(
    seed, n, d, beta, jitter, weighted, dtype, duplicates
):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype)
    quality = rng.uniform(0.05, 1.0, n) if weighted else None
    if duplicates:  # exact ties: repeated rows with repeated quality
        half = (n + 1) // 2
        x[half:] = x[: n - half]
        if weighted:
            quality[half:] = quality[: n - half]
    k = int(rng.integers(1, n + 1))
    weights = quality**beta if weighted else np.ones(n)
    L = dense_kernel(x, weights, jitter)
    expected = brute_force_greedy(L, k)
    for setting in SETTINGS:
        res = _run(x, k, setting, quality=quality, beta=beta, jitter=jitter)
        np.testing.assert_array_equal(res.indices, expected)
        np.testing.assert_allclose(res.gains, determinant_gains(L, expected), rtol=1e-7, atol=1e-12)
    res = _run(torch.from_numpy(x), k, "tiny", quality=quality, beta=beta, jitter=jitter)
    np.testing.assert_array_equal(res.indices, expected)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("jitter, d, k", [(1e-6, 48, 60), (0.0, 24, 40), (1e-6, 16, 40)])
def test_lazy_picks_and_gains_equal_the_full_pass(setting, jitter, d, k):
    rng = np.random.default_rng(d + k)
    x = rng.normal(size=(3000, d)).astype(np.float32)
    quality = rng.uniform(0.5, 1.0, 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyStopWarning)
        full = greedy_dpp_result(x, k, quality=quality, beta=4.0, jitter=jitter)
    got = _run(x, k, setting, quality=quality, beta=4.0, jitter=jitter)
    np.testing.assert_array_equal(got.indices, full.indices)
    np.testing.assert_allclose(got.gains, full.gains, rtol=1e-12, atol=1e-15)
    exact = feature_greedy(x, quality**4, k, jitter=jitter)
    np.testing.assert_array_equal(got.indices, exact[: got.indices.size])
    if not full.stopped_early:
        assert full.passes == k - 1  # one pass per pick after the first
    if setting == "fallback":
        assert got.passes >= full.passes  # every step made a full pass
    elif k <= d:
        assert got.passes < 0.5 * full.passes  # isotropic data: most candidates stay behind


def test_lazy_on_llm_like_embeddings_stays_exact():
    rng = np.random.default_rng(1)
    d = 128
    mean = rng.normal(size=d)
    mean[:2] *= 30.0
    mean *= 10.0 / np.linalg.norm(mean)
    pool = (mean + 2.0 * rng.normal(size=(4000, d)) / np.sqrt(d)).astype(np.float32)
    target = (mean + 2.0 * rng.normal(size=(500, d)) / np.sqrt(d)).astype(np.float32)
    pn = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    tn = target / np.linalg.norm(target, axis=1, keepdims=True)
    quality = (pn.astype(np.float64) @ tn.T.astype(np.float64)).max(axis=1)
    expected = feature_greedy(pool, quality**4, 150, jitter=1e-6)
    for setting in ("default", "tiny"):
        res = _run(pool, 150, setting, quality=quality, beta=4.0, jitter=1e-6)
        np.testing.assert_array_equal(res.indices, expected)
        assert res.rescored > 0


def test_lazy_numpy_and_torch_backends_agree():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    quality = rng.uniform(-0.2, 1.0, 3000)
    a = greedy_dpp(x, 60, quality=quality, jitter=1e-6, backend="numpy", lazy=True)
    b = greedy_dpp(
        torch.from_numpy(x), 60, quality=quality, jitter=1e-6, backend="torch", lazy=True
    )
    c = greedy_dpp(
        torch.from_numpy(x).to(torch.bfloat16), 60, quality=quality, jitter=1e-6, lazy=True
    )
    np.testing.assert_array_equal(a, greedy_dpp(x, 60, quality=quality, jitter=1e-6))
    np.testing.assert_array_equal(a, b)
    rounded = torch.from_numpy(x).to(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(c, greedy_dpp(rounded, 60, quality=quality, jitter=1e-6))


def test_lazy_rank_exhaustion_warns_like_the_full_pass():
    x = np.random.default_rng(6).normal(size=(50, 3))
    with pytest.warns(EarlyStopWarning, match="selected 3 of the 10"):
        got = greedy_dpp(x, 10, lazy=True)
    np.testing.assert_array_equal(got, brute_force_greedy(dense_kernel(x, np.ones(50), 0.0), 10))


def test_lazy_rejects_a_non_boolean():
    with pytest.raises(ValueError, match="lazy must be True or False"):
        greedy_dpp(np.eye(3), 1, lazy="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lazy_cuda_matches_the_cpu_full_pass():
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(5000, 96)).astype(np.float32))
    quality = rng.uniform(0.1, 1.0, 5000)
    cpu = greedy_dpp(x, 50, quality=quality, beta=4.0, jitter=1e-6)
    gpu = greedy_dpp(x.cuda(), 50, quality=quality, beta=4.0, jitter=1e-6, lazy=True)
    np.testing.assert_array_equal(cpu, gpu)
