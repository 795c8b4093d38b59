"""Greedy DPP over a pool sharded across 2 and 3 gloo ranks against one process on the whole pool.

Every scenario runs on uneven contiguous shards. The sharded run must return, on every rank, the
picks and gains of ``greedy_dpp_result`` / ``select`` on the concatenated pool (which
tests/test_dpp_greedy.py checks against brute-force determinants), including exact ties across
ranks, k > d (the jitter-only regime, where every candidate goes through float64 re-scoring),
beta 0 and 4, float32 and float64, the full-pass and the lazy greedy. A rank passing a different
k, or an invalid shard, makes every rank raise the same error instead of hanging.

Picks are compared exactly. Gains and relevance are not: a rank multiplies other blocks of rows
than one process does, and the BLAS kernel chooses its summation order by block shape and CPU
vector width (an AVX-512 machine gave a 1-ulp difference in q). They are compared within the
bounds that the float64 arithmetic guarantees (``dpp_reference.assert_gains_close`` and
``assert_relevance_close``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpp_select import greedy_dpp, relevance_scores, select
from dpp_select.distributed import DistributedArgumentError, shard_range
from dpp_select.greedy import greedy_dpp_result

from helpers.dpp_reference import (
    assert_gains_close,
    assert_relevance_close,
    brute_force_greedy,
    dense_kernel,
)
from helpers.gloo_workers import run_workers

pytestmark = pytest.mark.distributed

N, D, M = 41, 6, 9
# Shard boundaries per world size: uneven on purpose.
BOUNDS = {2: [0, 17, N], 3: [0, 9, 30, N]}
TARGET_BOUNDS = {2: [0, 2, M], 3: [0, 4, 4, M]}  # rank 1 of 3 holds no target row


def pool(dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool, targets and a quality vector with exact ties placed on different ranks.

    LLM-like (a shared mean direction plus small noise) so the float32 bounds trigger float64
    re-scoring. Rows 12, 20 and 35 are copies (ranks 0/1/1 of 2, 1/1/2 of 3) with the highest
    quality: the first pick must be 12, and after it both copies' gains vanish to the jitter.
    """
    rng = np.random.default_rng(7)
    mean = rng.normal(size=D) * 3.0
    x = (mean + rng.normal(size=(N, D))).astype(dtype)
    x[20] = x[12]
    x[35] = x[12]
    x[30] = x[29]  # a tie straddling the 3-rank boundary at 30
    targets = (mean + rng.normal(size=(M, D))).astype(dtype)
    quality = rng.uniform(0.5, 0.9, N)
    quality[[12, 20, 35]] = 0.95
    quality[[29, 30]] = 0.93
    return x, targets, quality


SCENARIOS = {
    # name: (dtype, beta, k, jitter, entry point)
    "f32_beta4_select": (np.float32, 4.0, 15, 1e-6, "select"),
    "f64_beta0_select": (np.float64, 0.0, 12, 1e-6, "select"),
    "f32_beta4_ties": (np.float32, 4.0, 14, 1e-4, "greedy"),
    "f64_beta0_ties": (np.float64, 0.0, 10, 1e-4, "greedy"),
    "f32_beta4_torch": (np.float32, 4.0, 9, 1e-6, "torch"),
    "f64_top_relevance": (np.float64, 4.0, 7, 1e-6, "top_relevance"),
    # The lazy greedy on shards against the lazy greedy in one process.
    "f32_beta4_lazy": (np.float32, 4.0, 14, 1e-4, "lazy"),
    "f64_beta0_lazy": (np.float64, 0.0, 10, 1e-6, "lazy"),
    "f32_beta4_lazy_torch": (np.float32, 4.0, 9, 1e-6, "lazy_torch"),
    "f32_beta4_lazy_select": (np.float32, 4.0, 15, 1e-6, "lazy_select"),
}


def run_scenario(name: str, world: int | None, rank: int = 0, group=None):
    dtype, beta, k, jitter, entry = SCENARIOS[name]
    x, targets, quality = pool(dtype)
    lo, hi = (0, N) if world is None else BOUNDS[world][rank : rank + 2]
    tlo, thi = (0, M) if world is None else TARGET_BOUNDS[world][rank : rank + 2]
    lazy = entry.startswith("lazy")
    if entry in ("greedy", "torch", "lazy", "lazy_torch"):
        emb = torch.from_numpy(x[lo:hi]) if entry.endswith("torch") else x[lo:hi]
        res = greedy_dpp_result(
            emb, k, quality=quality[lo:hi], beta=beta, jitter=jitter, lazy=lazy, process_group=group
        )
        return {"indices": res.indices, "gains": res.gains}
    method = "dpp" if entry.endswith("select") else entry
    res = select(
        x[lo:hi],
        targets[tlo:thi],
        k=k,
        method=method,
        beta=beta,
        jitter=jitter,
        lazy=lazy,
        process_group=group,
    )
    return {"indices": res.indices, "gains": res.gains, "quality": res.quality}


def expect_error(fn) -> str:
    try:
        fn()
    except DistributedArgumentError as err:
        return str(err)
    return "no error"


def worker(rank: int, world: int, out) -> None:
    import torch.distributed as dist

    group = dist.group.WORLD
    results = {
        name: {
            key: None if v is None else torch.from_numpy(v)
            for key, v in run_scenario(name, world, rank, group).items()
        }
        for name in SCENARIOS
    }
    x, _, quality = pool(np.float32)
    lo, hi = BOUNDS[world][rank : rank + 2]
    k = 5 + (rank == world - 1)  # the last rank asks for one more item
    results["mismatch"] = expect_error(
        lambda: greedy_dpp(x[lo:hi], k, quality=quality[lo:hi], process_group=group)
    )
    bad = x[lo:hi].copy()
    if rank == 1:
        bad[0, 2] = np.nan
    results["invalid"] = expect_error(lambda: relevance_scores(bad, x[:3], process_group=group))
    results["shard_range"] = shard_range(10, group)
    from dpp_select import relevance

    relevance._GATHER_BYTES = 2 * world * D * 8  # two float64 target rows per rank a round
    x64, targets, _ = pool(np.float64)
    tlo, thi = TARGET_BOUNDS[world][rank : rank + 2]
    results["rounds"] = torch.from_numpy(
        relevance_scores(x64[lo:hi], targets[tlo:thi], process_group=group)
    )
    decisions = []  # each rank's "normalise rows first" decision, as max_cosine receives it
    max_cosine = relevance.max_cosine

    def recording_max_cosine(*args):
        decisions.append(args[-1])
        return max_cosine(*args)

    relevance.max_cosine = recording_max_cosine
    results["tiny"] = torch.from_numpy(
        relevance_scores(
            tiny_rows(x)[lo:hi], targets[tlo:thi].astype(np.float32), process_group=group
        )
    )
    relevance.max_cosine = max_cosine
    results["tiny_unit"] = decisions == [True]
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module", params=[2, 3])
def sharded(request, tmp_path_factory):
    world = request.param
    out = run_workers(worker, world, tmp_path_factory.mktemp(f"dpp{world}"))
    return world, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sharded_picks_and_gains_equal_one_process(sharded, name):
    world, ranks = sharded
    whole = run_scenario(name, None)
    for rank, results in enumerate(ranks):
        got = {key: None if v is None else v.numpy() for key, v in results[name].items()}
        np.testing.assert_array_equal(got["indices"], whole["indices"])
        if whole["gains"] is not None:
            assert_gains_close(got["gains"], whole["gains"])
        if "quality" in whole:
            lo, hi = BOUNDS[world][rank : rank + 2]
            assert_relevance_close(got["quality"], whole["quality"][lo:hi], D, np.float64)


@pytest.mark.parametrize("name", [n for n in sorted(SCENARIOS) if "top" not in n])
def test_sharded_picks_equal_brute_force_determinants(sharded, name):
    """The literal float64 reference: det(L_S+i) / det(L_S) of the whole pool's kernel."""
    dtype, beta, k, jitter, entry = SCENARIOS[name]
    x, targets, quality = pool(dtype)
    if entry.endswith("select"):
        quality = relevance_scores(x, targets)
    expected = brute_force_greedy(dense_kernel(x, np.maximum(quality, 0.0) ** beta, jitter), k)
    np.testing.assert_array_equal(sharded[1][0][name]["indices"].numpy(), expected)


def test_ties_go_to_the_lowest_global_index(sharded):
    _, ranks = sharded
    picks = ranks[0]["f32_beta4_ties"]["indices"].tolist()
    assert picks[0] == 12  # 12, 20 and 35 tie exactly; they sit on different ranks
    assert 20 not in picks[:5] and 35 not in picks[:5]
    assert 29 in picks and (30 not in picks or picks.index(29) < picks.index(30))


def test_relevance_gathered_in_small_rounds_equals_one_process(sharded):
    world, ranks = sharded
    x, targets, _ = pool(np.float64)
    whole = relevance_scores(x, targets)
    for rank, results in enumerate(ranks):
        lo, hi = BOUNDS[world][rank : rank + 2]
        assert_relevance_close(results["rounds"].numpy(), whole[lo:hi], D, np.float64)


def tiny_rows(x: np.ndarray) -> np.ndarray:
    """Rows 0-2 (rank 0's) scaled far below float32's safe norms: relevance then normalises
    every row in float64 first, a decision every rank must take from all ranks' norms."""
    x = x.copy()
    x[:3] *= np.float32(1e-12)
    return x


def test_relevance_normalises_rows_on_every_rank_when_one_rank_needs_it(sharded):
    world, ranks = sharded
    x, targets, _ = pool(np.float32)
    whole = relevance_scores(tiny_rows(x), targets)
    assert all(results["tiny_unit"] for results in ranks)  # the decision, not only its rounding
    for rank, results in enumerate(ranks):
        lo, hi = BOUNDS[world][rank : rank + 2]
        # Rows normalised in float64, then multiplied in float32.
        assert_relevance_close(results["tiny"].numpy(), whole[lo:hi], D, np.float32)


def test_k_larger_than_d_is_selected(sharded):
    _, ranks = sharded
    assert len(ranks[0]["f32_beta4_select"]["indices"]) == 15 > D


def test_mismatched_k_raises_on_every_rank(sharded):
    world, ranks = sharded
    for results in ranks:
        assert "disagree on k" in results["mismatch"]
        assert f"rank {world - 1}: 6" in results["mismatch"]


def test_invalid_shard_raises_on_every_rank(sharded):
    _, ranks = sharded
    for results in ranks:
        assert "rank 1 rejected its input" in results["invalid"]
        assert "NaN" in results["invalid"]


def test_shard_range_splits_evenly_in_rank_order(sharded):
    world, ranks = sharded
    ranges = [results["shard_range"] for results in ranks]
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def dying_worker(rank: int, init: str, out: str) -> None:
    """Rank 1 exits abruptly during its fourth pick; rank 0 records what it raised."""
    import datetime
    import os
    import sys

    import torch.distributed as dist

    from dpp_select import distributed

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=120),
    )
    if rank == 1:
        calls = []
        original = distributed.Shard.best_lower

        def die_on_fourth(self, value):
            calls.append(value)
            if len(calls) == 4:
                os._exit(3)
            return original(self, value)

        distributed.Shard.best_lower = die_on_fourth
    x, _, quality = pool(np.float32)
    lo, hi = BOUNDS[2][rank : rank + 2]
    try:
        greedy_dpp(x[lo:hi], 10, quality=quality[lo:hi], process_group=dist.group.WORLD)
        outcome = "returned"
    except Exception as err:  # whatever the backend raises, it must raise
        outcome = f"raised {type(err).__name__}"
    with open(out, "w") as handle:
        handle.write(outcome)
    sys.stdout.flush()
    os._exit(0)  # no gloo teardown with a dead peer


def test_a_rank_that_dies_makes_the_others_raise(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    out = tmp_path / "rank0.txt"
    procs = [
        ctx.Process(target=dying_worker, args=(r, str(tmp_path / "init"), str(out)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)  # a guard against a hang, not a threshold: gloo fails at once
    assert [p.exitcode for p in procs] == [0, 3]
    assert out.read_text().startswith("raised")


def outcome(fn) -> str:
    """What ``fn`` raised, as 'Type: message' (any exception: a local one is the bug here)."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test compares what every rank raised
        return f"{type(err).__name__}: {err}"
    return "no error"


def contract_worker(rank: int, world: int, out) -> None:
    """Each rank misuses the sharded API once, then retries correctly; records what happened."""
    import torch.distributed as dist

    group = dist.group.WORLD
    x, targets, quality = pool(np.float32)
    lo, hi = BOUNDS[world][rank : rank + 2]
    tlo, thi = TARGET_BOUNDS[world][rank : rank + 2]
    results = {
        # Every rank passes the whole fine-tuning set instead of its share.
        "replicated": outcome(lambda: select(x[lo:hi], targets, ratio=1.0, process_group=group)),
        # One rank alone asks for the lazy greedy.
        "lazy_select": outcome(
            lambda: select(x[lo:hi], targets[tlo:thi], k=5, lazy=rank == 1, process_group=group)
        ),
        "lazy_greedy": outcome(
            lambda: greedy_dpp(
                x[lo:hi], 5, quality=quality[lo:hi], lazy=rank == 1, process_group=group
            )
        ),
        "lazy_everywhere": str(
            greedy_dpp(x[lo:hi], 5, quality=quality[lo:hi], lazy=True, process_group=group).tolist()
        ),
    }
    # The collectives are still aligned: a correct retry works.
    retry = select(x[lo:hi], targets[tlo:thi], ratio=1.0, process_group=group)
    results["retry"] = torch.from_numpy(retry.indices)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module", params=[2, 3])
def misused(request, tmp_path_factory):
    world = request.param
    out = run_workers(contract_worker, world, tmp_path_factory.mktemp(f"misuse{world}"))
    return world, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_replicated_targets_are_refused_on_every_rank(misused):
    """Targets are sharded like the pool; the whole set on every rank would count R times."""
    world, ranks = misused
    for results in ranks:
        message = results["replicated"]
        assert message.startswith("DistributedArgumentError: ")
        assert f"every rank passed the same {M} target rows" in message
        assert "shard_range" in message


@pytest.mark.parametrize("case", ["lazy_select", "lazy_greedy"])
def test_lazy_on_one_rank_only_raises_the_same_error_on_every_rank(misused, case):
    world, ranks = misused
    messages = {results[case] for results in ranks}
    assert len(messages) == 1, messages
    message = messages.pop()
    assert message.startswith("DistributedArgumentError: ") and "disagree on lazy" in message
    assert "rank 1: True" in message and "rank 0: False" in message


def test_lazy_on_every_rank_selects_what_one_process_selects(misused):
    x, _, quality = pool(np.float32)
    whole = greedy_dpp(x, 5, quality=quality, lazy=True)
    for results in misused[1]:
        assert results["lazy_everywhere"] == str(whole.tolist())


def test_collectives_stay_aligned_after_a_refused_call(misused):
    _, ranks = misused
    x, targets, _ = pool(np.float32)
    whole = select(x, targets, ratio=1.0)
    assert whole.indices.size == M
    for results in ranks:
        np.testing.assert_array_equal(results["retry"].numpy(), whole.indices)
