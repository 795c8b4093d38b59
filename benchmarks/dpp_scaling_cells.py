"""The measured cells of ``dpp_scaling.py``, each run in a fresh process by its section.

grid_cell  time, peak memory and roofline ratio of one greedy selection on isotropic data;
refs_cell  the same selection against the full-kernel Cholesky greedy of Chen et al. (2018) and the
           authors' per-step triangular re-solve;
llm_cell   LLM-like embeddings: picks against an exact float64 greedy and a plain float32 pass;
gpu_cell   the torch backend on CUDA against the measured device-to-device copy bandwidth.

Imported by ``dpp_scaling.py``, which puts the repository root and ``tests/`` (for
``helpers.dpp_reference``) on ``sys.path``.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from dpp_distributed import _time_pass
from dpp_select.greedy import greedy_dpp_result
from dpp_select.relevance import relevance_scores
from lazy_families import _gaussian

from helpers.dpp_reference import (
    chen_greedy,
    dense_kernel,
    feature_greedy,
    float32_pass_greedy,
    resolve_greedy,
)


def llm_like(n: int, d: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool and fine-tuning embeddings sharing a large mean direction, plus small noise.

    Like mean-pooled LLM states, the mean carries two "massive activation" coordinates (30x the
    others) and has norm 10 against noise of norm 2, so q is about 0.97 for almost every item.
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d)
    mean[:2] *= 30.0
    mean *= 10.0 / np.linalg.norm(mean)

    def make(k: int) -> np.ndarray:
        return (mean + 2.0 * rng.normal(size=(k, d)) / np.sqrt(d)).astype(np.float32)

    return make(n), make(m)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def grid_cell(n: int, d: int, k: int) -> dict:
    x = _gaussian(n, d, seed=n + d)
    quality = np.random.default_rng(1).uniform(0.5, 1.0, n)
    passes = _time_pass(x)
    rss_before = _peak_rss()
    t = time.perf_counter()
    res = greedy_dpp_result(x, k, quality=quality, beta=4.0, jitter=1e-6)
    elapsed = time.perf_counter() - t
    extra = _peak_rss() - rss_before
    t_pass = float(np.median(passes + _time_pass(x)))  # before and after: the machine is shared
    return {
        "n": n,
        "d": d,
        "k": k,
        "time": elapsed,
        "pass": t_pass,
        "roofline": elapsed / (k * t_pass),
        "extra": extra,
        "x_bytes": x.nbytes,
        "rescored": res.rescored,
    }


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    for i, (u, v) in enumerate(zip(a, b)):
        if u != v:
            return f"step {i + 1}"
    return "none" if len(a) == len(b) else f"length {len(a)} vs {len(b)}"


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def refs_cell(n: int, d: int, k: int, data: str) -> dict:
    if data == "llm":
        x, target = llm_like(n, d, 1000, seed=2)
        quality = relevance_scores(x, target)
    else:
        x = _gaussian(n, d, seed=3)
        quality = np.random.default_rng(1).uniform(0.5, 1.0, n)
    w, jitter = np.maximum(quality, 0.0) ** 4, 1e-6
    ours, t_ours = _timed(greedy_dpp_result, x, k, quality=quality, beta=4.0, jitter=jitter)
    chen, t_chen = _timed(lambda: chen_greedy(dense_kernel(x, w, jitter), k))
    resolve, t_resolve = _timed(lambda: resolve_greedy(dense_kernel(x, w, jitter), k))
    return {
        "n": n,
        "d": d,
        "k": k,
        "data": data,
        "ours": t_ours,
        "chen": t_chen,
        "resolve": t_resolve,
        "same_chen": bool(np.array_equal(ours.indices, chen)),
        "same_resolve": bool(np.array_equal(ours.indices, resolve)),
        "rescored": ours.rescored,
    }


def llm_cell() -> dict:
    n, d, k = 8000, 256, 240
    x, target = llm_like(n, d, 2000, seed=1)
    quality = relevance_scores(x, target)
    w, jitter = np.maximum(quality, 0.0) ** 4, 1e-6
    ours, t_ours = _timed(greedy_dpp_result, x, k, quality=quality, beta=4.0, jitter=jitter)
    exact, t_exact = _timed(feature_greedy, x, w, k, jitter)
    naive, t_naive = _timed(float32_pass_greedy, x, w, k, jitter)
    chen, t_chen = _timed(lambda: chen_greedy(dense_kernel(x, w, jitter), k))
    seeds = []  # the same comparison on more draws of the data
    for seed in range(2, 6):
        xs, ts = llm_like(n, d, 2000, seed=seed)
        qs = relevance_scores(xs, ts)
        ws = np.maximum(qs, 0.0) ** 4
        exact_s = feature_greedy(xs, ws, k, jitter)
        ours_s = greedy_dpp_result(xs, k, quality=qs, beta=4.0, jitter=jitter)
        seeds.append(
            (
                seed,
                bool(np.array_equal(ours_s.indices, exact_s)),
                ours_s.rescored,
                _first_difference(float32_pass_greedy(xs, ws, k, jitter), exact_s),
            )
        )
    # The instance of tests/test_dpp_greedy.py (float64 relevance, 1000 targets), on which the
    # plain float32 pass does change the picks.
    rng = np.random.default_rng(1)
    mean = rng.normal(size=d)
    mean[:2] *= 30.0
    mean *= 10.0 / np.linalg.norm(mean)
    xt, tt = (
        (mean + 2.0 * rng.normal(size=(m, d)) / np.sqrt(d)).astype(np.float32) for m in (n, 1000)
    )
    xn = (xt / np.linalg.norm(xt, axis=1, keepdims=True)).astype(np.float64)
    tn = (tt / np.linalg.norm(tt, axis=1, keepdims=True)).astype(np.float64)
    qt = (xn @ tn.T).max(axis=1)
    exact_t = feature_greedy(xt, qt**4, k, jitter)
    ours_t = greedy_dpp_result(xt, k, quality=qt, beta=4.0, jitter=jitter)
    seeds.append(
        (
            "test",
            bool(np.array_equal(ours_t.indices, exact_t)),
            ours_t.rescored,
            _first_difference(float32_pass_greedy(xt, qt**4, k, jitter), exact_t),
        )
    )
    return {
        "q_share_085": float(np.mean(quality > 0.85)),
        "q_median": float(np.median(quality)),
        "same_exact": bool(np.array_equal(ours.indices, exact)),
        "same_chen": bool(np.array_equal(ours.indices, chen)),
        "naive_diverges": _first_difference(naive, exact),
        "rescored": ours.rescored,
        "steps": k,
        "n": n,
        "seeds": seeds,
        "t_ours": t_ours,
        "t_exact": t_exact,
        "t_naive": t_naive,
        "t_chen": t_chen,
    }


def gpu_cell(n: int, d: int, k: int) -> dict:
    import torch

    dev = torch.device("cuda")
    x = torch.empty((n, d), dtype=torch.bfloat16, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    for lo in range(0, n, 65536):
        x[lo : lo + 65536] = torch.randn((min(n, lo + 65536) - lo, d), generator=gen, device=dev)
    quality = torch.rand(n, generator=gen, device=dev).double().cpu().numpy() * 0.5 + 0.5
    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        big.clone()
    torch.cuda.synchronize()
    copy_bw = 5 * 2 * big.numel() / (time.perf_counter() - t)
    del big
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.cuda.synchronize()
    t = time.perf_counter()
    res = greedy_dpp_result(x, k, quality=quality, beta=4.0, jitter=1e-6, backend="torch")
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    step_bw = x.numel() * x.element_size() / (elapsed / k)
    return {
        "n": n,
        "d": d,
        "k": k,
        "time": elapsed,
        "copy_bw": copy_bw,
        "step_bw": step_bw,
        "fraction": step_bw / copy_bw,
        "name": torch.cuda.get_device_name(),
        "extra_gpu": torch.cuda.max_memory_allocated() - base,
        "rescored": res.rescored,
    }
