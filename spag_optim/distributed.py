r"""SPAG across processes: one alpha for every rank, from the global safety loss and gradient.

Each rank evaluates the safety closure on its own safe mini-batch. The projection of Eq. 4 must
nevertheless be *one* projection of the replicated (or sharded) parameters, so that replicas never
drift apart:

* the loss used for alpha (and for ``skip_if_safe``'s decision) is the mean of the ranks' losses,
  all-reduced *before* the host reads it, so every rank skips or projects together (a rank that
  skips the safety backward while another runs it would hang a DDP backward);
* the gradient is the gradient of that mean, i.e. the mean of the ranks' gradients;
* :math:`\lVert g\rVert^2` (and the utility step's length for ``trust_region="relative"``) is
  summed over the shards of sharded parameters exactly once, never over replicas.

Equal per-rank batch sizes are assumed, as DDP's own gradient averaging does: the mean of
per-rank mean losses is then the mean loss over the concatenated batch.

``distributed=`` modes (``SPAGOptimizer(..., distributed=...)``):

``None``
    single process; nothing is reduced.
``"ddp"``
    the safety closure runs the ``DistributedDataParallel``-wrapped model, whose backward already
    averages the gradient; SPAG all-reduces only the loss (one scalar).
``"allreduce"``
    the safety closure runs the bare module (``ddp_model.module`` or a model not wrapped at all):
    SPAG averages the loss and the gradient itself.
``"sharded"``
    parameters are ``DTensor``\ s (FSDP2's ``fully_shard``, or a ``DeviceMesh`` layout): the
    gradient arrives reduced and sharded; SPAG averages the loss and sums squared norms over the
    mesh dimensions on which each parameter is sharded (``Shard``), not over ``Replicate`` ones.
``"auto"`` (default)
    ``None`` without an initialised process group (or with one rank), ``"sharded"`` when any
    parameter is a ``DTensor``, ``"ddp"`` when the closure's ``.model`` (as built by
    :func:`spag_optim.make_safety_closure`) is a ``DistributedDataParallel``, else
    ``"allreduce"``: a plain function cannot be inspected, and all-reducing a gradient that DDP
    already averaged is still correct (the ranks hold equal values), only one all-reduce slower;
    pass ``"ddp"`` to save it.

The reductions are device-side collectives: they add no host synchronisation of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import functional as F

__all__ = [
    "DEEPSPEED_UNSUPPORTED",
    "DISTRIBUTED_MODES",
    "Reducer",
    "check_distributed_mode",
    "is_dtensor",
    "local_tensors",
    "reject_deepspeed",
    "resolve_distributed",
]

logger = logging.getLogger(__name__)

DISTRIBUTED_MODES = ("auto", "ddp", "allreduce", "sharded", None)

try:  # DTensor is public from torch 2.4; older versions simply have no sharded parameters.
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch < 2.4
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local_tensors(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local shard of each ``DTensor`` (a view of its storage), other tensors unchanged.

    Call under ``torch.no_grad()``: in-place arithmetic on the result updates the parameters.
    """
    return [t.to_local() if is_dtensor(t) else t for t in tensors]


def check_distributed_mode(mode: Any) -> None:
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(
            f"unknown distributed={mode!r}; choose 'auto', 'ddp' (closure runs the DDP-wrapped "
            "model), 'allreduce' (closure runs the bare module), 'sharded' (FSDP2/DTensor) or None"
        )


def resolve_distributed(
    mode: str | None, params: Sequence[Tensor], safety_closure: Callable[[], Tensor], group: Any
) -> str | None:
    """The concrete mode for ``mode`` (see the module docstring); checked on the first step."""
    if mode is None:
        return None
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised:
        if mode == "auto":
            return None
        raise RuntimeError(
            f"distributed={mode!r} but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group first, or pass distributed=None"
        )
    if mode != "auto":
        return mode
    if any(is_dtensor(p) for p in params):
        resolved: str | None = "sharded"
    elif dist.get_world_size(group) == 1:
        resolved = None
    else:
        from torch.nn.parallel import DistributedDataParallel

        model = getattr(safety_closure, "model", None)
        resolved = "ddp" if isinstance(model, DistributedDataParallel) else "allreduce"
    logger.info("SPAG: distributed='auto' resolved to %r", resolved)
    return resolved


class Reducer:
    """The loss, gradient and squared-norm reductions of one resolved ``distributed`` mode.

    Built from the optimizer's parameters: for ``"sharded"`` it records, per parameter, the mesh
    dimensions its norm must be summed over, so that the norm of the gradient and of the
    utility step (same layout as the parameters) are reduced the same way.
    """

    def __init__(self, mode: str | None, params: Sequence[Tensor], group: Any = None) -> None:
        self.mode = mode
        self.group = group
        self.world_size = dist.get_world_size(group) if mode is not None else 1
        # For "sharded": per parameter, a key (mesh, sharded mesh dims); plain tensors get None.
        self._layout: list[tuple[Any, tuple[int, ...]] | None] = []
        if mode == "sharded":
            for p in params:
                if not is_dtensor(p):
                    self._layout.append(None)
                    continue
                if any(placement.is_partial() for placement in p.placements):
                    raise ValueError(
                        "SPAG got a DTensor parameter with a Partial placement; parameters must be "
                        "Shard or Replicate (as FSDP2 and tensor parallelism lay them out)"
                    )
                dims = tuple(i for i, pl in enumerate(p.placements) if pl.is_shard())
                self._layout.append((p.device_mesh, dims))

    @property
    def reduces_grads(self) -> bool:
        """Whether SPAG must average the gradient itself (the closure's backward did not)."""
        return self.mode == "allreduce"

    def mean_loss(self, loss: Tensor) -> Tensor:
        """The mean over ranks of the detached ``loss`` (itself when not distributed)."""
        value = loss.detach()
        if is_dtensor(value):
            value = value.full_tensor()
        if self.mode is None:
            return value
        # A copy, summed in at least float32 (an fp16 loss summed over many ranks could overflow).
        value = value.to(torch.promote_types(value.dtype, torch.float32), copy=True)
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self.group)
        return value.div_(self.world_size)

    def average_grads_(self, grads: Sequence[Tensor]) -> None:
        """All-reduce the gradients to their mean over ranks, in place (``"allreduce"`` mode).

        One asynchronous collective per tensor, all in flight together, then one foreach
        division: no flat copy of the gradient (it would double the gradient's memory on a large
        model). A DDP-wrapped closure (``"ddp"``) lets DDP's bucketed reduction do this instead.
        """
        if not self.reduces_grads or not grads:
            return
        works = [
            dist.all_reduce(g, op=dist.ReduceOp.SUM, group=self.group, async_op=True) for g in grads
        ]
        for work in works:
            work.wait()
        torch._foreach_div_(list(grads), float(self.world_size))

    def sq_norm(self, local: Sequence[Tensor], device: torch.device) -> Tensor:
        """Global :math:`\\sum \\lVert t\\rVert^2` of tensors laid out like the parameters.

        ``local`` holds local shards (see :func:`local_tensors`). Replicated tensors are counted
        once; a sharded tensor's partial sum is all-reduced over its ``Shard`` mesh dimensions
        only, once per layout.
        """
        if self.mode != "sharded":
            return F.global_sq_norm(local, device)
        groups: dict[Any, list[Tensor]] = {}
        for t, layout in zip(local, self._layout):
            groups.setdefault(layout if layout is None or layout[1] else None, []).append(t)
        parts = [F.global_sq_norm(groups.pop(None, []), device)]
        for (mesh, dims), tensors in groups.items():  # insertion order: the same on every rank
            partial = F.global_sq_norm(tensors, device)
            for dim in dims:
                dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
            parts.append(partial)
        dtype = parts[0].dtype
        for part in parts[1:]:
            dtype = torch.promote_types(dtype, part.dtype)
        return torch.stack([part.to(dtype) for part in parts]).sum()


DEEPSPEED_UNSUPPORTED = (
    "SPAGOptimizer does not support DeepSpeed ZeRO: ZeRO partitions gradients and fp32 master "
    "weights and performs the update inside its engine, so SPAG can neither compute the full "
    "safety gradient at theta+ nor move the master weights after the inner step. Use DDP or FSDP2 "
    "(torch.distributed.fsdp.fully_shard) with SPAGOptimizer instead."
)


def _is_deepspeed_runtime(obj: Any) -> bool:
    """An engine or ZeRO optimizer (``deepspeed.runtime``); DeepSpeed's fused/CPU Adam kernels
    (``deepspeed.ops``) are plain torch optimizers and stay allowed."""
    return any(cls.__module__.startswith("deepspeed.runtime") for cls in type(obj).__mro__)


def reject_deepspeed(inner: Any, safety_closure: Any) -> None:
    """Fail early, and say why, when SPAG is handed DeepSpeed ZeRO pieces.

    ZeRO owns the step: the engine reduces and partitions gradients, keeps the fp32 master weights
    in partitions (stage 1-2) and the parameters themselves in partitions (stage 3), and updates
    them in its own ``step()``. SPAG has to differentiate the safety loss at theta+, take the
    norm of the *whole* gradient and move the master weights after the inner step; none of that
    is reachable through a ZeRO optimizer or engine, and projecting the fp16/bf16 copies instead
    would be overwritten by the next master-weight update.
    """
    model = getattr(safety_closure, "model", None)
    params = [p for group in getattr(inner, "param_groups", []) for p in group.get("params", [])]
    suspects = [("optimizer", inner), ("safety closure", safety_closure), ("closure model", model)]
    found = [what for what, obj in suspects if obj is not None and _is_deepspeed_runtime(obj)]
    if any(hasattr(p, "ds_id") for p in params):
        found.append("ZeRO-3 partitioned parameters")
    if found:
        raise NotImplementedError(f"got a DeepSpeed {', '.join(found)}. {DEEPSPEED_UNSUPPORTED}")
