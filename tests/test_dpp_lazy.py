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

import dpp_select.engine.lazy as lazy_mod
from dpp_select import EarlyStopWarning, greedy_dpp
from dpp_select.engine.array_ops import NumpyOps, TorchOps, for_device
from dpp_select.engine.backends import TorchPass
from dpp_select.engine.kernel import WholePool, dpp_weights, make_pass
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import (
    assert_gains_close,
    brute_force_greedy,
    dense_kernel,
    feature_greedy,
)
from helpers.gloo_workers import run_workers
from helpers.greedy_grid import GREEDY_GRID
from helpers.host_traffic import host_transfers

# Constants small enough that a dozen candidates already use several blocks, batches and
# pool rebuilds; and a zero budget, which sends every step to the full-pass fallback.
TINY = {"_BLOCK": 3, "_FIRST_BATCH": 1, "_MIN_POOL": 2, "_SAMPLE": 4}
SETTINGS = {"default": {}, "tiny": TINY, "fallback": {**TINY, "_BUDGET": 0.0}}


def _run(x, k, setting="default", namespace="by device", **kwargs):
    """The lazy greedy through the public API; ``namespace="torch"`` keeps its bookkeeping in
    torch tensors even on the CPU (the code path of an accelerator), instead of NumPy."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", EarlyStopWarning)
        if SETTINGS[setting]:
            stack.enter_context(mock.patch.multiple(lazy_mod, **SETTINGS[setting]))
        if namespace == "torch":
            stack.enter_context(mock.patch.object(lazy_mod, "for_device", TorchOps))
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
    for namespace in ("by device", "torch"):
        res = _run(
            torch.from_numpy(x), k, "tiny", namespace, quality=quality, beta=beta, jitter=jitter
        )
        np.testing.assert_array_equal(res.indices, expected)


@pytest.mark.parametrize(
    "backend, namespace", [("numpy", "by device"), ("torch", "by device"), ("torch", "torch")]
)
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("jitter, d, k", [(1e-6, 48, 60), (0.0, 24, 40), (1e-6, 16, 40)])
def test_lazy_picks_and_gains_equal_the_full_pass(backend, namespace, setting, jitter, d, k):
    rng = np.random.default_rng(d + k)
    x = rng.normal(size=(3000, d)).astype(np.float32)
    quality = rng.uniform(0.5, 1.0, 3000)
    emb = x if backend == "numpy" else torch.from_numpy(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EarlyStopWarning)
        full = greedy_dpp_result(emb, k, quality=quality, beta=4.0, jitter=jitter)
    got = _run(emb, k, setting, namespace, quality=quality, beta=4.0, jitter=jitter)
    np.testing.assert_array_equal(got.indices, full.indices)
    assert_gains_close(got.gains, full.gains)
    exact = feature_greedy(x, quality**4, k, jitter=jitter)
    np.testing.assert_array_equal(got.indices, exact[: got.indices.size])
    if not full.stopped_early:
        assert full.passes == k - 1  # one pass per pick after the first
    if setting == "fallback":
        assert got.passes >= full.passes  # every step made a full pass
    elif k <= d:
        assert got.passes < 0.5 * full.passes  # isotropic data: most candidates stay behind


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_lazy_in_the_torch_namespace_moves_no_pool_sized_array_to_the_host(setting, monkeypatch):
    """The accelerator's code path, run on CPU tensors (the torch namespace forced; by device the
    CPU gets NumPy, whose bookkeeping is host memory anyway): once its state is on the device, a
    pick moves O(d + contenders + batch) values to the host. With N = 20000 and d = 32, all 24
    picks together move less than N/2 values, none of them N/10 at once, and the full-pass
    fallback never copies the pass into a host array. (k < d: beyond the features' rank every
    gain falls to the jitter and every candidate contends, in the full-pass greedy too.)"""

    def no_host_pass(self, a, out):
        raise AssertionError("the pass was copied into a host array")

    monkeypatch.setattr(TorchPass, "project", no_host_pass)
    monkeypatch.setattr(lazy_mod, "for_device", TorchOps)
    for name, value in SETTINGS[setting].items():
        monkeypatch.setattr(lazy_mod, name, value)
    rng = np.random.default_rng(3)
    n, k = 20000, 24
    x = torch.from_numpy(rng.normal(size=(n, 32)).astype(np.float32))
    quality = rng.uniform(0.5, 1.0, n)
    xpass, norms = make_pass(x, "torch", None)
    greedy = lazy_mod._LazyGreedy(xpass, norms, dpp_weights(quality, n, 4.0), k, 1e-6, WholePool())
    assert isinstance(greedy.gain, torch.Tensor)
    with host_transfers() as sizes:
        got = greedy.run(k, 0.0)
    full = greedy_dpp_result(x, k, quality=quality, beta=4.0, jitter=1e-6, eps=0.0)
    np.testing.assert_array_equal(got.indices, full.indices)
    assert max(sizes) < n // 10 and sum(sizes) < n // 2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lazy_on_the_cpu_keeps_its_bookkeeping_in_numpy_on_both_backends(backend):
    """On the CPU, NumPy's small pool-sized operations are several times cheaper than torch's,
    so the state is NumPy arrays whichever backend holds the embeddings; any other device keeps
    torch tensors there (no CUDA needed to check the choice)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    emb = x if backend == "numpy" else torch.from_numpy(x)
    xpass, norms = make_pass(emb, backend, None)
    greedy = lazy_mod._LazyGreedy(xpass, norms, np.ones(500), 10, 1e-6, WholePool())
    state = (greedy.gain, greedy.err, greedy.ub, greedy.at, greedy.pool, greedy.basis)
    assert all(isinstance(a, np.ndarray) for a in state)
    assert greedy.basis is greedy.basis_a  # no device copy of the basis to keep in step
    assert isinstance(for_device(torch.device("cpu")), NumpyOps)
    ops = for_device(torch.device("cuda", 1))
    assert isinstance(ops, TorchOps) and ops.device == torch.device("cuda", 1)


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


def _sharded_lazy_worker(rank: int, world: int, out, bounds, k) -> None:
    import torch.distributed as dist

    x, quality = _sharded_pool()
    lo, hi = bounds[rank], bounds[rank + 1]
    results = {}
    for setting in SETTINGS:
        for namespace in ("by device", "torch"):
            res = _run(
                torch.from_numpy(x[lo:hi]),
                k,
                setting,
                namespace,
                quality=quality[lo:hi],
                beta=4.0,
                jitter=1e-6,
                process_group=dist.group.WORLD,
            )
            results[setting, namespace] = (res.indices, res.gains)
    torch.save(results, out / f"rank{rank}.pt")


def _sharded_pool() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    mean = rng.normal(size=12) * 2.0  # a shared direction: near-ties, float64 re-scoring
    return (mean + rng.normal(size=(400, 12))).astype(np.float32), rng.uniform(0.5, 1.0, 400)


@pytest.mark.distributed
def test_sharded_lazy_on_the_torch_backend_equals_one_process(tmp_path):
    """Two gloo ranks (uneven shards) run the lazy greedy on the torch backend, in each lazy
    setting (pool rebuilds, several blocks, every step falling back to a full pass) and in
    both array namespaces: every rank returns one process's picks, and its gains within the
    float64 re-scoring rounding."""
    bounds, k = [0, 150, 400], 30
    out = run_workers(_sharded_lazy_worker, 2, tmp_path, bounds, k)
    x, quality = _sharded_pool()
    for setting in SETTINGS:
        whole = _run(torch.from_numpy(x), k, setting, quality=quality, beta=4.0, jitter=1e-6)
        for rank in range(2):
            results = torch.load(out / f"rank{rank}.pt", weights_only=False)
            for namespace in ("by device", "torch"):
                indices, gains = results[setting, namespace]
                np.testing.assert_array_equal(indices, whole.indices)
                assert_gains_close(gains, whole.gains)
