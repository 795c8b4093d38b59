"""``apply_guardspace``: turn a model's Linear layers into GuardSpace adapters in place
(arXiv 2510.14301, Sec. 3; steps 1-3 in :mod:`.covariance` and :mod:`.decompose`).

Threshold: the paper's relative 1e-6 sits just above float32's rounding floor, where the authors
accumulate. With float64 covariances (the default here) the floor is ~1e-16, and 1e-6 would also
call "null" directions the null data do use weakly (components up to ~1e-3 of an input), through
which training leaks: on the tests' tiny Llama, the logits of the null prompts moved 2e-3 after six
AdamW steps at 1e-6 and 1e-6 at 1e-10. So the float64 default is 1e-10.

Order and memory: the null-space pass runs first and each group's covariance is reduced to its
factored projector at once, so only one set of covariances (the safety pass's) is ever alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .._caller_warning import warn_at_caller
from ..warnings import EmptyNullSpaceWarning
from .covariance import input_covariances
from .decompose import DEFAULT_DAMPING, INVERSE_TOLERANCE, null_space, preconditioned_svd
from .layer import GuardSpaceLinear, NullSpaceProjector, residual_weight

__all__ = ["apply_guardspace", "LayerReport", "find_targets", "adapter_parameters", "set_submodule"]

Batches = Iterable[Mapping[str, Any]]


@dataclass(frozen=True)
class LayerReport:
    """What GuardSpace did to one Linear.

    ``damping``: the relative damping that passed the inverse check (0.01 * 2**k); ``null_dim``:
    the dimension of its null space (0: the adapter cannot change this layer); ``projector``: the
    name of the layer whose input the (shared) projector was built from; ``projector_numel``: the
    numbers stored for that projector (``in_features * min(null_dim, in_features - null_dim)``).
    """

    in_features: int
    out_features: int
    damping: float
    null_dim: int
    projector: str
    projector_numel: int


def find_targets(model: nn.Module, target_modules: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """The Linears to adapt: those whose name is, or ends with ``.`` + , an entry of
    ``target_modules``; by default every ``nn.Linear`` except the output embedding (LM head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, GuardSpaceLinear):
            raise ValueError(f"{name} is already a GuardSpace layer: apply GuardSpace to the base model once")
        if target_modules is None:
            if isinstance(module, nn.Linear) and module is not head and not name.endswith("lm_head"):
                found[name] = module
        elif any(name == t or name.endswith("." + t) for t in target_modules):
            if not isinstance(module, nn.Linear):
                raise ValueError(f"{name} matches target_modules but is a {type(module).__name__}, not nn.Linear")
            found[name] = module
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no target Linear found for target_modules={target_modules}; this model's are {linear}")
    return found


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable GuardSpace parameters (``adapter_A``, ``adapter_B`` of every layer)."""
    return [p for m in model.modules() if isinstance(m, GuardSpaceLinear) for p in (m.adapter_A, m.adapter_B)]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace ``model``'s submodule at dotted ``name`` by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def apply_guardspace(
    model: nn.Module,
    safety_batches: Batches,
    null_batches: Batches,
    rank: int,
    target_modules: Sequence[str] | None = None,
    *,
    damping: float = DEFAULT_DAMPING,
    inverse_tol: float = INVERSE_TOLERANCE,
    null_rel_tol: float | None = None,
    null_abs_tol: float = 1e-8,
    null_energy: float | None = None,
    on_empty: str = "warn",
    covariance_dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> dict[str, LayerReport]:
    """Replace the target Linears of ``model`` by :class:`GuardSpaceLinear` adapters, in place.

    Args:
        model: called as ``model(**batch)``; e.g. a Hugging Face causal LM.
        safety_batches: model-input dicts of the safety calibration data (the paper: harmful
            prompts); their covariance picks the adapter's components. Iterated once.
        null_batches: model-input dicts of the null-space data (the paper: harmful prompts as
            well); after training, every adapted layer's output on them is unchanged. Iterated once.
        rank: adapter rank (the smallest ``rank`` components of the preconditioned SVD).
        target_modules: names (or name suffixes) of the Linears; default every Linear but the head.
        damping, inverse_tol: the covariance damping schedule (:func:`.preconditioned_svd`).
        null_rel_tol, null_abs_tol: the null-space threshold ``max(abs, rel * lambda_max)``
            (:func:`.null_space`). Default ``rel``: the paper's 1e-6 for float32 covariances, 1e-10
            for float64 (see the module docstring).
        null_energy: instead, protect the leading directions carrying this share of the null
            data's spectral energy (e.g. 0.99); use it when the null data span the input space.
        on_empty: ``"warn"`` (default) or ``"raise"`` when a layer's null space is empty (its
            adapter can then change nothing); ``"ignore"`` to accept it silently.
        covariance_dtype: accumulation dtype (float64; float32 halves the memory).
        progress: show a progress bar per pass (needs ``tqdm``).

    Returns ``{layer name: LayerReport}``. Afterwards only ``adapter_A``/``adapter_B`` require grad
    (:func:`adapter_parameters` lists them).
    """
    if on_empty not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_empty must be 'warn', 'raise' or 'ignore', got {on_empty!r}")
    if null_rel_tol is None:
        null_rel_tol = 1e-10 if covariance_dtype == torch.float64 else 1e-6
    layers = find_targets(model, target_modules)
    too_small = {n: tuple(m.weight.shape) for n, m in layers.items() if rank > min(m.in_features, m.out_features)}
    if rank < 1 or too_small:
        raise ValueError(f"rank {rank} must be in [1, min(in, out)] of every target; too large for {too_small}")
    null_covs, null_leader = input_covariances(
        model, layers, null_batches, dtype=covariance_dtype, desc="GuardSpace null-space covariances",
        progress=progress,
    )
    projectors: dict[str, NullSpaceProjector] = {}
    for leader in list(null_covs):
        weight = layers[leader].weight
        space = null_space(null_covs.pop(leader), rel_tol=null_rel_tol, abs_tol=null_abs_tol, energy=null_energy)
        projectors[leader] = NullSpaceProjector(space, dtype=weight.dtype).to(weight.device)
    empty = [name for name in layers if projectors[null_leader[name]].dim == 0]
    if empty and on_empty != "ignore":
        message = (
            f"GuardSpace: the null space is empty for {len(empty)} layer(s) (e.g. {empty[0]}): the null "
            "data span their whole input space, so P = 0 and their adapters cannot change anything. "
            "Use fewer null-space tokens or null_energy=0.99 (protect only the directions carrying 99% "
            "of the null data's energy)."
        )
        if on_empty == "raise":
            raise ValueError(message)
        warn_at_caller(message, EmptyNullSpaceWarning)

    covs, leader = input_covariances(
        model, layers, safety_batches, dtype=covariance_dtype, desc="GuardSpace safety covariances",
        progress=progress,
    )
    if leader != null_leader:
        raise ValueError("the layers sharing an input differ between the safety and null batches")
    report: dict[str, LayerReport] = {}
    uses = {key: list(leader.values()).count(key) for key in covs}
    for name, linear in layers.items():
        weight = linear.weight
        cov = covs[leader[name]]
        uses[leader[name]] -= 1
        if uses[leader[name]] == 0:
            del covs[leader[name]]  # free each covariance after its group's last layer
        a, b, used = preconditioned_svd(weight.to(cov), cov, rank, damping=damping, inverse_tol=inverse_tol)
        projector = projectors[leader[name]]
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        bias = None if linear.bias is None else linear.bias.detach()
        set_submodule(model, name, GuardSpaceLinear(residual_weight(weight, a, b, projector), bias, a, b, projector))
        report[name] = LayerReport(
            linear.in_features, linear.out_features, used, projector.dim, leader[name], projector.basis.numel()
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for param in adapter_parameters(model):
        param.requires_grad_(True)
    return report
