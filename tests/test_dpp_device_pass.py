"""The torch backend's full-pass greedy with its bookkeeping on the device (device_pass.py).

On the CPU these prove what does not need a GPU: the picks equal exact float64 references for
float32, bfloat16 and float16 storage; the split pass over half-precision storage stays within
its stated bound; the pass never becomes a NumPy array; and the Python-level work per pick does
not grow with N. The CUDA tests run the same on a GPU (benchmarks/gpu_check.py runs them).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpp_select import EarlyStopWarning
from dpp_select._inputs import row_norms
from dpp_select.engine.backends import TorchPass, pass_error_unit
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import brute_force_greedy, chen_greedy, dense_kernel
from helpers.greedy_grid import GREEDY_GRID

HALF = [torch.bfloat16, torch.float16]


def _quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyStopWarning)
        return greedy_dpp_result(*args, **kwargs)


@settings(max_examples=60, deadline=None)
@given(storage=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), **GREEDY_GRID)
def test_torch_backend_matches_brute_force_for_each_storage(
    storage, seed, n, d, beta, jitter, weighted, dtype
):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)).to(storage)
    quality = rng.uniform(0.05, 1.0, n) if weighted else None
    k = int(rng.integers(1, n + 1))
    weights = quality**beta if weighted else np.ones(n)
    stored = x.to(torch.float64).numpy()  # exact for the stored (rounded) values
    expected = brute_force_greedy(dense_kernel(stored, weights, jitter), k)
    got = _quiet(x, k, quality=quality, beta=beta, jitter=jitter, backend="torch")
    np.testing.assert_array_equal(got.indices, expected)


@pytest.mark.parametrize("storage", HALF)
def test_half_storage_picks_equal_exact_float64_greedy_at_n4000(storage):
    rng = np.random.default_rng(11)
    mean = rng.normal(size=64) * 3.0  # a shared direction: many near-ties, many re-scorings
    x = torch.from_numpy((mean + rng.normal(size=(4000, 64))).astype(np.float32)).to(storage)
    quality = rng.uniform(0.1, 1.0, 4000)
    stored = x.to(torch.float64).numpy()
    expected = chen_greedy(dense_kernel(stored, quality**4, 1e-6), 60)
    res = greedy_dpp_result(x, 60, quality=quality, beta=4.0, jitter=1e-6, backend="torch")
    np.testing.assert_array_equal(res.indices, expected)


def test_torch_gains_equal_numpy_gains_within_float64_rescoring_rounding():
    """Same fold arithmetic in the same order; only float64 re-scoring sums in another order,
    which moves a gain by at most about k u64 L_ii (k = 50 here, so 1e-12 x max L_ii)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    quality = rng.uniform(0.1, 1.0, 3000)
    a = greedy_dpp_result(x, 50, quality=quality, beta=4.0, jitter=1e-6, backend="numpy")
    b = greedy_dpp_result(
        torch.from_numpy(x), 50, quality=quality, beta=4.0, jitter=1e-6, backend="torch"
    )
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(b.gains, a.gains, rtol=0, atol=1e-12 * float(quality.max()) ** 8)
    assert a.passes == b.passes


@pytest.mark.parametrize("storage", HALF)
@pytest.mark.parametrize("spread", [1.0, 1e-30, 1e6])
def test_split_pass_stays_within_its_stated_bound(storage, spread):
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(size=(3000, 300)).astype(np.float32)).to(storage)
    p = TorchPass(x, row_norms(x))
    assert p.unit == pass_error_unit(300, False, half=storage)
    stored = x.to(torch.float64).numpy()
    a = rng.normal(size=300) * np.exp(rng.uniform(-8, 8, 300)) * spread  # wide dynamic range
    v = p.project_device(a)
    assert v.dtype == torch.float32 and v.device == x.device
    exact = stored @ a
    bound = p.unit * np.linalg.norm(stored, axis=1) * np.linalg.norm(a)
    err = np.abs(v.numpy().astype(np.float64) - exact)
    assert np.all(err <= bound)
    assert err.max() > 0  # the pass really is inexact


@pytest.mark.parametrize("dim", [1, 64, 4096])
def test_split_pass_bound_stays_within_3x_the_float32_bound(dim):
    """The split keeps float32 quality (a rounded to bfloat16 once would add 2^-8), so half
    storage re-scores about as few candidates as float32 storage."""
    for storage in HALF:
        assert pass_error_unit(dim, False, half=storage) < 3 * pass_error_unit(dim, False)


def test_torch_backend_never_copies_the_pass_to_numpy(monkeypatch):
    def no_host_pass(self, a, out):
        raise AssertionError("the pass was copied into a host array")

    monkeypatch.setattr(TorchPass, "project", no_host_pass)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(500, 16)).astype(np.float32))
    res = greedy_dpp_result(
        x, 20, quality=rng.uniform(0.1, 1, 500), beta=4.0, jitter=1e-6, backend="torch"
    )
    assert res.indices.size == 20


def _python_calls(fn) -> int:
    """Python and C function calls made while ``fn`` runs (its Python-level work)."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_python_work_per_pick_does_not_grow_with_n(storage):
    """N = 600, and the same 600 rows plus 60000 that never contend (weight 1e-4): identical
    picks, contenders and re-scorings, so the calls that 29 more picks add are the same unless
    some per-pick work loops over the pool (the NumPy backend's chunked bookkeeping does). The
    one-off setup (norms, weights, copies to the device) is chunked by design and cancels."""
    rng = np.random.default_rng(8)
    small = rng.normal(size=(600, 32)).astype(np.float32)
    large = np.concatenate([small, rng.normal(size=(60000, 32)).astype(np.float32)])
    q_small = rng.uniform(0.5, 1.0, 600)
    q_large = np.concatenate([q_small, np.full(60000, 1e-4)])

    def per_pick_calls(x, q):
        emb = torch.from_numpy(x).to(storage)
        results = []

        def run(k):
            results.append(
                greedy_dpp_result(emb, k, quality=q, beta=1.0, jitter=1e-9, backend="torch").indices
            )

        run(30)  # warm up (lazy imports, logger caches)
        return _python_calls(lambda: run(30)) - _python_calls(lambda: run(1)), results[0]

    calls_small, picks_small = per_pick_calls(small, q_small)
    calls_large, picks_large = per_pick_calls(large, q_large)
    np.testing.assert_array_equal(picks_small, picks_large)
    assert calls_small == calls_large


def test_host_work_benchmark_counts_the_same_work_per_pick_at_both_sizes():
    """benchmarks/dpp_host_work.py at toy sizes: its timing-free counts (Python opcodes, C calls,
    elements brought to the host) are equal at N and 50 N, and what reaches the host per pick is
    O(d + contenders), far below N."""
    import dpp_host_work

    r = dpp_host_work.measure(600, 30000, 16, 8)
    small, large = r["cells"][600], r["cells"][30000]
    np.testing.assert_array_equal(small["picks"], large["picks"])
    for count in ("opcodes_per_pick", "ops_per_pick", "to_host_per_pick"):
        assert small[count] == large[count], count
    assert 0 < large["to_host_per_pick"] < 600
    assert small["host_per_pick"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("storage", HALF + [torch.float32])
def test_cuda_split_pass_bound_and_picks(storage):
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.normal(size=(20000, 512)).astype(np.float32)).to(storage)
    p = TorchPass(x.cuda(), row_norms(x))
    a = rng.normal(size=512) * np.exp(rng.uniform(-8, 8, 512))
    stored = x.to(torch.float64).numpy()
    err = np.abs(p.project_device(a).cpu().numpy().astype(np.float64) - stored @ a)
    assert np.all(err <= p.unit * np.linalg.norm(stored, axis=1) * np.linalg.norm(a))
    quality = rng.uniform(0.1, 1.0, 20000)
    cpu = greedy_dpp_result(stored, 40, quality=quality, beta=4.0, jitter=1e-6, backend="numpy")
    gpu = greedy_dpp_result(x.cuda(), 40, quality=quality, beta=4.0, jitter=1e-6)
    np.testing.assert_array_equal(gpu.indices, cpu.indices)
