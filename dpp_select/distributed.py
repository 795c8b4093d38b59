"""Exact greedy DPP selection over a pool sharded across ``torch.distributed`` ranks.

Each rank holds a contiguous block of the pool's rows (blocks in rank order, sizes may differ) and
runs the single-process greedy of ``kernel.py`` (Chen et al. 2018's greedy MAP in feature space)
on it; per pick, three small collectives make the decisions that span ranks:

1. every rank makes its float32 pass over its own rows; one all-reduce (max, 8 bytes) gives the
   best lower bound over the whole pool, so every rank re-scores in float64 exactly the
   candidates one process would have (the decision to re-score is global, so the gains are
   those of one process: bitwise in the tests, at worst differing by the float64 rounding of
   how re-scored rows are grouped into blocks, far below the tie margin);
2. one all-gather of each rank's best exact gain G_r (8 bytes per rank). Every rank computes
   G = max_r G_r and the owner: the lowest rank with G_r >= G - margin. Shards are in rank
   order, so that rank holds the lowest global index whose gain ties the best (the
   single-process tie rule, margin included); no rank needs to say which of its items tie;
3. the owner broadcasts [global index, f_choice] (8 (d + 1) bytes); every rank extends the same
   basis with it and updates the gains of its own rows.

The lazy greedy (``lazy.py``) makes the same three collectives: each rank brings forward its own
candidates until none left behind can reach its own best lower bound, so every candidate that
can reach the largest one over the ranks (collective 1) has been brought forward.

The traffic per pick, 8 (R + d + 2) bytes, does not grow with N. Two more collectives run once:
an all-gather of every rank's arguments and local validation outcome before any work (so a bad
input or a disagreeing rank raises the same error on every rank instead of leaving the others
waiting), and a sum of the re-scoring counts at the end. A rank that dies makes its peers' next
collective fail within the process group's timeout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .engine.device_pass import full_pass_greedy
from .engine.kernel import GreedyInputs, check_scalars, dpp_weights, make_pass
from .engine.lazy import run_lazy

__all__ = [
    "DistributedArgumentError",
    "Shard",
    "agree",
    "agree_sizes",
    "all_gather_tensor",
    "collective_device",
    "gather_quality",
    "shard_range",
    "sharded_greedy",
]

#: ``torch.distributed``'s all-gather into one tensor (``all_gather_into_tensor`` is deprecated,
#: renamed, from torch 2.13 on; None on a torch built without distributed support, where this
#: module is still imported by ``import dpp_select`` but no process group can exist).
all_gather_tensor = getattr(dist, "all_gather_single", None) or getattr(
    dist, "all_gather_into_tensor", None
)


class DistributedArgumentError(ValueError):
    """Ranks disagree on an argument, or one rank's input is invalid (raised on every rank)."""


def shard_range(n: int, process_group: Any = None) -> tuple[int, int]:
    """The rows [lo, hi) of ``n`` that this rank holds when ``n`` items are split evenly in
    rank order (the first ``n % R`` ranks hold one more). Without a group: (0, n)."""
    if process_group is None:
        return 0, n
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    size, extra = divmod(n, world)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def collective_device(group: Any) -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(
    group: Any, name: str, local: dict, error: BaseException | None, same: Sequence[str]
) -> list[dict]:
    """All-gather every rank's ``local`` facts and validation outcome; raise the same error on
    every rank when one rank failed or when the ranks' values of the keys in ``same`` differ.
    Returns the gathered facts, in rank order."""
    gathered: list = [None] * dist.get_world_size(group)
    message = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(gathered, (message, local), group=group)
    for rank, (msg, _) in enumerate(gathered):
        if msg is not None:
            raise DistributedArgumentError(f"{name}: rank {rank} rejected its input: {msg}")
    facts = [f for _, f in gathered]
    for key in same:
        values = [f[key] for f in facts]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise DistributedArgumentError(
                f"{name}: the ranks disagree on {key} ({shown}); every rank must pass the "
                "same arguments and embeddings of the same dimension"
            )
    return facts


class Shard:
    """This rank's block of the pool, as ``kernel.run_full_pass`` sees it (the ``WholePool``
    interface)."""

    def __init__(
        self, group: Any, offset: int, base_max: float, xpass: Any, w: np.ndarray, norms: np.ndarray
    ) -> None:
        self.group = group
        self.offset = offset  # global index of this rank's first row
        self.base_max = base_max  # largest L_ii over all ranks
        self._xpass, self._w, self._norms, self._d = xpass, w, norms, xpass.d
        self._f = np.empty(0)
        self.rank = dist.get_rank(group)
        self.device = collective_device(group)
        world = dist.get_world_size(group)
        self._global_ranks = dist.get_process_group_ranks(group)
        self._bests = torch.empty(world, dtype=torch.float64, device=self.device)
        self._mine = torch.empty(1, dtype=torch.float64, device=self.device)
        self._lower = torch.empty(1, dtype=torch.float64, device=self.device)

    def max_diagonal(self, base: np.ndarray) -> float:
        return self.base_max

    def best_lower(self, value: float) -> float:
        """The largest lower bound on any rank: every rank re-scores exactly the candidates
        that one process would, so the float64 arithmetic (and the gains) are the same."""
        self._lower.fill_(value)
        dist.all_reduce(self._lower, op=dist.ReduceOp.MAX, group=self.group)
        return float(self._lower.item())

    def pick(self, contenders: np.ndarray, values: np.ndarray, margin: float) -> tuple[float, int]:
        """All-gather the ranks' best exact gains; the lowest rank within ``margin`` of the
        best owns the pick and broadcasts [global index, f_choice]. Returns (best, index)."""
        self._mine.fill_(float(values.max()) if values.size else -np.inf)
        all_gather_tensor(self._bests, self._mine, group=self.group)
        bests = self._bests.cpu().numpy()
        best = float(bests.max())
        owner = int(np.flatnonzero(bests >= best - margin)[0])
        payload = torch.zeros(self._d + 1, dtype=torch.float64)
        if owner == self.rank:
            local = int(contenders[np.flatnonzero(values >= best - margin)[0]])
            payload[0] = self.offset + local
            scale = self._w[local] / self._norms[local]  # as kernel.run_full_pass computes it
            payload[1:] = torch.from_numpy(self._xpass.rows(np.array([local]))[0] * scale)
        payload = payload.to(self.device)
        dist.broadcast(payload, src=self._global_ranks[owner], group=self.group)
        payload = payload.cpu().numpy()
        self._f = payload[1:]
        return best, int(payload[0])

    def features(self, xpass: Any, choice: int, scale: np.ndarray) -> np.ndarray:
        """The chosen item's features, as the owner broadcast them in ``pick``."""
        return self._f

    def total_rescored(self, count: int) -> int:
        value = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, group=self.group)
        return int(value.item())


def sharded_greedy(
    emb: Any,
    k: int,
    quality: Any,
    beta: float,
    jitter: float,
    eps: float,
    backend: str,
    device: Any,
    group: Any,
    lazy: bool = False,
):
    """``greedy_dpp_result`` on this rank's shard; see the module docstring.

    ``lazy`` is part of the agreement: ranks that disagree on it raise the same error on every
    rank (a rank running the other greedy would wait in collectives its peers never join)."""
    xpass = norms = w = None
    error = None
    try:
        check_scalars(k, jitter, eps)
        xpass, norms = make_pass(emb, backend, device)
        w = dpp_weights(quality, xpass.n, beta)
    except (ValueError, TypeError) as err:
        error = err
    local = {
        "k": k,
        "beta": beta,
        "jitter": jitter,
        "eps": eps,
        "lazy": lazy,
        "d": None if xpass is None else xpass.d,
        "n": 0 if xpass is None else xpass.n,
        "base_max": None if w is None else float((w * w + jitter).max()),
    }
    facts = agree(group, "greedy_dpp", local, error, ("k", "beta", "jitter", "eps", "lazy", "d"))
    sizes = [f["n"] for f in facts]
    if k > sum(sizes):
        raise DistributedArgumentError(
            f"k={k} exceeds the pool size N={sum(sizes)} (all ranks); ask for at most "
            f"{sum(sizes)} items"
        )
    shard = Shard(
        group,
        sum(sizes[: dist.get_rank(group)]),
        max(f["base_max"] for f in facts),
        xpass,
        w,
        norms,
    )
    run = run_lazy if lazy else full_pass_greedy
    return run(GreedyInputs(xpass, norms, w, int(k), float(jitter), float(eps), shard))


def agree_sizes(group: Any, n_pool: int, target_emb: Any, **arguments: Any) -> tuple[int, int]:
    """Check that every rank passed the same ``arguments`` and its own share of the targets;
    return the global pool and target sizes.

    The fine-tuning set is sharded like the pool. Every rank passing the whole set would count
    it R times (``ratio=`` would select R times too many items) and multiply the relevance work
    by R, so identical non-empty target blocks on every rank are refused on every rank.
    """
    local = {"n": n_pool, "m": len(target_emb), "targets": _fingerprint(target_emb), **arguments}
    facts = agree(group, "select", local, None, tuple(arguments))
    m = facts[0]["m"]
    if (
        len(facts) > 1
        and m > 0
        and facts[0]["targets"] is not None
        and all(f["targets"] == facts[0]["targets"] for f in facts)
    ):
        raise DistributedArgumentError(
            f"select: every rank passed the same {m} target rows, but the fine-tuning set is "
            "sharded like the pool (ratio= would count it once per rank); pass each rank its "
            "own block: lo, hi = dpp_select.distributed.shard_range(len(targets), "
            "process_group), then target_emb=targets[lo:hi]"
        )
    return sum(f["n"] for f in facts), sum(f["m"] for f in facts)


def _fingerprint(x: Any) -> str | None:
    """A hash of an embedding block's dtype, shape and bytes (None when it is not an array)."""
    try:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            shape, dtype = tuple(x.shape), str(x.dtype)
            data = x.reshape(-1).view(torch.uint8).numpy()
        else:
            data = np.ascontiguousarray(x)
            shape, dtype = data.shape, str(data.dtype)
        digest = hashlib.sha256(f"{dtype}{shape}".encode())
        digest.update(memoryview(data).cast("B"))
    except (TypeError, ValueError, RuntimeError):  # not an array: relevance_scores says why
        return None
    return digest.hexdigest()


def gather_quality(quality: np.ndarray, group: Any) -> np.ndarray:
    """Every rank's q, concatenated in rank order, on every rank."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, quality, group=group)
    return np.concatenate(parts)
