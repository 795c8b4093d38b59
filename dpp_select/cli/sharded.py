"""``dpp-select`` on several processes (``torchrun``, or ``--distributed`` with a launcher's env).

Every rank reads, embeds and caches only its contiguous share of the pool and of the fine-tuning
set (``distributed.shard_range``), the selection runs sharded (``select(process_group=...)``),
and rank 0 alone writes the outputs, gathering the selected rows from their owners. gloo on the
CPU, NCCL when ``--device cuda`` (rank r uses cuda:LOCAL_RANK). Any rank's bad input stops every
rank with the same message (and exit status 2).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

from spard_io import count_jsonl_rows, read_jsonl

from ..distributed import agree, shard_range
from ._files import write_outputs
from .command import check_args, chosen_by, embed, fields, report, select_recording_warnings, texts

__all__ = ["run_sharded", "wants_distributed"]


def wants_distributed(args: argparse.Namespace) -> bool:
    """``--distributed``, or a launcher (torchrun) that started more than one process."""
    return args.distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _process_group(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """Join the launcher's process group; True when this call created it."""
    if dist.is_initialized():
        return False
    if not all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        parser.error(
            "--distributed needs the environment a launcher sets (RANK, WORLD_SIZE, "
            "MASTER_ADDR); start with: torchrun --nproc-per-node R --no-python "
            "dpp-select ..."
        )
    cuda = args.device is not None and args.device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _read_and_embed(args: argparse.Namespace, world: int) -> tuple:
    """This rank's share of both files, embedded: the checks of the one-process run, rows
    sharded."""
    indices_out = check_args(args)
    pool_fields = fields(args.pool_fields, args.allow_unsafe_field, "--pool-fields")
    target_fields = fields(args.target_fields, args.allow_unsafe_field, "--target-fields")
    keep = None if args.keep_fields is None else fields(args.keep_fields, True, "--keep-fields")
    n_pool, n_target = count_jsonl_rows(args.pool), count_jsonl_rows(args.target)
    if n_pool < world:
        raise ValueError(
            f"{args.pool}: {n_pool} pool rows cannot be shared among {world} "
            "ranks; run in one process"
        )
    if not n_target:
        raise ValueError(f"{args.target}: the fine-tuning set holds no rows")
    lo, hi = shard_range(n_pool, dist.group.WORLD)
    tlo, thi = shard_range(n_target, dist.group.WORLD)
    pool_rows = read_jsonl(
        args.pool,
        required=pool_fields + (keep or []),
        span=(lo, hi),
        chosen_by=chosen_by(pool_fields, keep),
    )
    target_rows = read_jsonl(
        args.target,
        required=target_fields,
        span=(tlo, thi),
        chosen_by=chosen_by(target_fields, None, "--target-fields"),
    )
    loaded: dict = {}
    pool_emb = embed(texts(pool_rows, pool_fields), args.pool, args, loaded, lo)
    target_emb = (
        embed(texts(target_rows, target_fields), args.target, args, loaded, tlo)
        if target_rows
        else np.empty((0, pool_emb.shape[1]), dtype=np.float32)
    )
    if keep is not None:  # after embedding: the kept fields need not include the embedded ones
        pool_rows = [{f: row[f] for f in keep} for row in pool_rows]
    return indices_out, n_pool, lo, pool_rows, pool_emb, target_emb


def run_sharded(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The command on this rank; see the module docstring."""
    created = _process_group(args, parser)
    try:
        group, world = dist.group.WORLD, dist.get_world_size()
        error, shard = None, None
        try:
            shard = _read_and_embed(args, world)
        except (ValueError, OSError) as err:  # JSONLError and EmbeddingError are ValueErrors
            error = err
        try:
            agree(group, "dpp-select", {}, error, ())
            indices_out, n_pool, lo, pool_rows, pool_emb, target_emb = shard
            result, caught = select_recording_warnings(pool_emb, target_emb, args, group)
        except ValueError as err:
            parser.exit(2, f"dpp-select: error: {' '.join(str(err).split())}\n")
        mine = {
            int(i): pool_rows[int(i) - lo] for i in result.indices if lo <= i < lo + len(pool_rows)
        }
        parts: list | None = [None] * world if dist.get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if parts is not None:
            rows = {i: row for part in parts for i, row in part.items()}
            try:
                write_outputs(
                    args.out, indices_out, (rows[i] for i in result.indices), result.indices
                )
            except OSError as err:
                parser.exit(2, f"dpp-select: error: {err}\n")
            report(result, n_pool, args, indices_out, caught, where=f" on {world} ranks")
        dist.barrier()  # outputs exist before any rank returns
        return 0
    finally:
        if created:
            dist.destroy_process_group()
