"""greedy_dpp against literal float64 references (determinants, Chen et al., feature space)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from dpp_select import EarlyStopWarning, greedy_dpp
from dpp_select._inputs import row_norms
from dpp_select.engine.backends import NumpyPass, TorchPass
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import (
    brute_force_greedy,
    chen_greedy,
    dense_kernel,
    feature_greedy,
    float32_pass_greedy,
)
from helpers.greedy_grid import GREEDY_GRID


def _quiet_greedy(*args, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyStopWarning)
        return greedy_dpp(*args, **kwargs)


@settings(max_examples=80, deadline=None)
@given(**GREEDY_GRID)
def test_matches_brute_force_determinants(seed, n, d, beta, jitter, weighted, dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype)
    quality = rng.uniform(0.05, 1.0, n) if weighted else None
    k = int(rng.integers(1, n + 1))
    weights = quality**beta if weighted else np.ones(n)
    expected = brute_force_greedy(dense_kernel(x, weights, jitter), k)
    got = _quiet_greedy(x, k, quality=quality, beta=beta, jitter=jitter)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    got_torch = _quiet_greedy(torch.from_numpy(x), k, quality=quality, beta=beta, jitter=jitter)
    np.testing.assert_array_equal(got_torch, expected)


def test_matches_chen_cholesky_greedy_at_n2000():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 48)).astype(np.float32)
    quality = rng.uniform(0.0, 1.0, 2000)
    for beta, jitter in [(1.0, 1e-6), (4.0, 0.0)]:
        expected = chen_greedy(dense_kernel(x, quality**beta, jitter), 40)
        got = greedy_dpp(x, 40, quality=quality, beta=beta, jitter=jitter)
        np.testing.assert_array_equal(got, expected)


def _llm_like(rng: np.random.Generator, n: int, d: int, mean: np.ndarray) -> np.ndarray:
    """A large shared mean direction plus small isotropic noise, like LLM mean-pooled states."""
    return (mean + 2.0 * rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float32)


def test_llm_like_picks_equal_exact_float64_greedy():
    rng = np.random.default_rng(1)
    d = 256
    mean = rng.normal(size=d)
    mean[:2] *= 30.0  # "massive activation" coordinates, as in LLM hidden states
    mean *= 10.0 / np.linalg.norm(mean)
    pool, target = _llm_like(rng, 8000, d, mean), _llm_like(rng, 1000, d, mean)
    pn = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    tn = target / np.linalg.norm(target, axis=1, keepdims=True)
    quality = (pn.astype(np.float64) @ tn.T.astype(np.float64)).max(axis=1)
    assert np.mean(quality > 0.85) > 0.9
    res = greedy_dpp_result(pool, 240, quality=quality, beta=4.0, jitter=1e-6)
    expected = feature_greedy(pool, quality**4, 240, jitter=1e-6)
    np.testing.assert_array_equal(res.indices, expected)
    assert res.rescored > 0
    # The data is hard: without the error bounds, a float32 pass changes the picks.
    assert not np.array_equal(float32_pass_greedy(pool, quality**4, 240, 1e-6), expected)
    # The gains reported are the exact float64 ones of the reference kernel's first steps.
    chen = chen_greedy(dense_kernel(pool[:1500], quality[:1500] ** 4, 1e-6), 30)
    np.testing.assert_array_equal(
        greedy_dpp(pool[:1500], 30, quality=quality[:1500], beta=4.0, jitter=1e-6), chen
    )


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_torch_half_storage_is_exact_for_the_rounded_embeddings(half):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(300, 24)).astype(np.float32)).to(half)
    quality = rng.uniform(0.1, 1.0, 300)
    rounded = x.to(torch.float64).numpy()
    expected = chen_greedy(dense_kernel(rounded, quality**4, 1e-6), 25)
    got = greedy_dpp(x, 25, quality=quality, beta=4.0, jitter=1e-6, backend="torch")
    np.testing.assert_array_equal(got, expected)


def test_tf32_falls_back_to_an_exact_float64_pass(monkeypatch, caplog):
    import dpp_select.engine.backends as backends

    monkeypatch.setattr(backends, "_tf32_enabled", lambda device: True)
    rng = np.random.default_rng(10)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    quality = rng.uniform(0.1, 1.0, 400)
    p = TorchPass(torch.from_numpy(x), row_norms(x))
    assert p.pass_dtype == np.float64 and "TF32" in caplog.text
    expected = chen_greedy(dense_kernel(x, quality**4, 1e-6), 20)
    got = greedy_dpp(torch.from_numpy(x), 20, quality=quality, beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(got, expected)


def test_numpy_and_torch_cpu_backends_agree():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    quality = rng.uniform(-0.2, 1.0, 3000)
    a = greedy_dpp(x, 60, quality=quality, beta=1.0, jitter=1e-6, backend="numpy")
    b = greedy_dpp(
        torch.from_numpy(x),
        60,
        quality=torch.from_numpy(quality),
        beta=1.0,
        jitter=1e-6,
        backend="torch",
        device="cpu",
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make_pass",
    [
        lambda x: NumpyPass(x, row_norms(x)),
        lambda x: TorchPass(torch.from_numpy(x), row_norms(x)),
        lambda x: TorchPass(
            torch.from_numpy(x).to(torch.bfloat16),
            row_norms(torch.from_numpy(x).to(torch.bfloat16)),
        ),
        lambda x: NumpyPass(x.astype(np.float64) * 1e39, row_norms(x.astype(np.float64) * 1e39)),
        lambda x: NumpyPass(x * np.float32(1e-40), row_norms(x * np.float32(1e-40))),
    ],
)
def test_pass_error_stays_within_the_stated_bound(make_pass):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(4000, 300)) * rng.uniform(0.01, 100, (4000, 1))).astype(np.float32)
    p = make_pass(x)
    stored = p.rows(np.arange(4000))
    a = rng.normal(size=300)
    a /= np.linalg.norm(a) * 3.0
    out = np.empty(4000, dtype=p.pass_dtype)
    p.project(a, out)
    exact = stored @ a
    bound = p.unit * np.linalg.norm(stored, axis=1) * np.linalg.norm(a)
    assert np.all(np.abs(out - exact) <= bound)
    assert np.max(np.abs(out - exact)) > 0  # the pass really is float32


@pytest.mark.parametrize("scale", [3e38, 1e39, 1e-43, 1e-45])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float64_beyond_float32_range_keeps_exact_picks(scale, backend):
    """Float64 embeddings whose float32 copy would overflow (>= 3e38) or underflow (<= 1e-43)
    pick exactly what the float64 reference picks on the same values."""
    rng = np.random.default_rng(12)
    mean = rng.normal(size=24)
    x = _llm_like(rng, 400, 24, mean).astype(np.float64) * scale
    quality = rng.uniform(0.05, 1.0, 400)
    expected = feature_greedy(x, quality**4, 30, jitter=1e-6)
    np.testing.assert_array_equal(
        expected, feature_greedy(x / scale, quality**4, 30, jitter=1e-6)
    )  # cosine: scale-free
    emb = x if backend == "numpy" else torch.from_numpy(x)
    got = greedy_dpp(emb, 30, quality=quality, beta=4.0, jitter=1e-6, backend=backend)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300])
def test_any_finite_float64_scale_keeps_the_unscaled_picks(scale):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(200, 12))
    quality = rng.uniform(0.05, 1.0, 200)
    expected = feature_greedy(x, quality**4, 20, jitter=1e-6)
    for emb in (x * scale, torch.from_numpy(x * scale)):
        np.testing.assert_array_equal(
            greedy_dpp(emb, 20, quality=quality, beta=4.0, jitter=1e-6), expected
        )


def test_all_relevance_at_most_zero_warns_why_the_picks_are_in_index_order():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(30, 5))
    from dpp_select import NoRelevanceWarning  # a category of its own: it was a bare UserWarning

    with pytest.warns(NoRelevanceWarning, match=r"every relevance score is <= 0.*indices 0, 1, 2"):
        got = greedy_dpp(x, 4, quality=-rng.uniform(0, 1, 30), beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one positive score, or beta = 0: nothing to say
        greedy_dpp(x, 4, quality=np.r_[0.5, -np.ones(29)], beta=4.0, jitter=1e-6)
        greedy_dpp(x, 4, quality=-np.ones(30), beta=0.0, jitter=1e-6)


def test_rank_exhaustion_stops_at_eps_with_a_warning():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 3))
    with pytest.warns(EarlyStopWarning, match="selected 3 of the 10"):
        got = greedy_dpp(x, 10)
    np.testing.assert_array_equal(got, brute_force_greedy(dense_kernel(x, np.ones(50), 0.0), 10))
    # Jitter keeps every item selectable, so all 10 come back.
    assert greedy_dpp(x, 10, jitter=1e-3).size == 10


def test_negative_quality_is_clamped_to_zero_weight():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 8))
    quality = np.where(np.arange(20) < 10, -0.5, 0.5)
    with pytest.warns(EarlyStopWarning):
        got = greedy_dpp(x, 15, quality=quality, beta=1.5)
    assert set(got.tolist()) <= set(range(10, 20))
    # With jitter the clamped items have gain exactly jitter and come last, lowest index first.
    got = greedy_dpp(x, 12, quality=quality, beta=1.5, jitter=1e-4)
    assert set(got[:8].tolist()) <= set(range(10, 20))
    assert got[10:].tolist() == [0, 1]


def test_exact_ties_go_to_the_lowest_index():
    x = np.tile(np.eye(3), (2, 1))  # rows i and i + 3 are identical
    np.testing.assert_array_equal(greedy_dpp(x, 3), [0, 1, 2])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 4)), "no rows"),
        (np.ones(4), "2-D"),
        (np.ones((3, 4), dtype=np.int64), "not float"),
        (np.array([[1.0, np.nan], [1.0, 0.0], [np.inf, 1.0]]), "rows 0, 2 hold NaN or inf"),
        (np.array([[1.0, 2.0], [0.0, 0.0]]), "rows 1 are all zero"),
    ],
)
def test_bad_embeddings_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        greedy_dpp(bad, 1)


def test_bad_arguments_raise_clear_errors():
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="exceeds the pool size N=5"):
        greedy_dpp(x, 6)
    with pytest.raises(ValueError, match="quality must have shape"):
        greedy_dpp(x, 2, quality=np.ones(4))
    with pytest.raises(ValueError, match="beta"):
        greedy_dpp(x, 2, quality=np.ones(5), beta=-1.0)
    with pytest.raises(ValueError, match="backend"):
        greedy_dpp(x, 2, backend="cuda")
    assert greedy_dpp(x, 0).size == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backend_matches_the_cpu_backend(dtype):
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(5000, 96)).astype(np.float32)).to(dtype)
    quality = rng.uniform(0.1, 1.0, 5000)
    cpu = greedy_dpp(x, 50, quality=quality, beta=4.0, jitter=1e-6, backend="torch")
    gpu = greedy_dpp(x.cuda(), 50, quality=torch.from_numpy(quality).cuda(), beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(cpu, gpu)
