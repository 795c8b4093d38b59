"""``apply_guardspace``: turn a model's Linear layers into GuardSpace adapters in place
(arXiv 2510.14301, Sec. 3; steps 1-3 in :mod:`.covariance` and :mod:`.decompose`).

Threshold: the paper's relative 1e-6 sits just above float32's rounding floor, where the authors
accumulate. With float64 covariances (the default here) the floor is ~1e-16, and 1e-6 would also
call "null" directions the null data do use weakly (components up to ~1e-3 of an input), through
which training leaks: on the tests' tiny Llama, the logits of the null prompts moved 2e-3 after six
AdamW steps at 1e-6 and 1e-6 at 1e-10. So the float64 default is 1e-10.

Order and memory: the null-space pass runs first and each group's covariance is reduced to its
factored projector at once, so only one set of covariances (the safety pass's) is ever alive.

All or nothing: every argument is checked, both passes run and every adapter layer is built before
the first Linear is replaced (:mod:`.surgery`), so an error leaves the model as it was.

Iterables are read once per pass. An endless one (a :class:`spag_optim.SafetyBatches`, an
``itertools.cycle``) would never finish a pass: it is refused unless ``max_batches`` bounds it.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._caller_warning import warn_at_caller
from ..safety_data import SafetyBatches
from ..warnings import EmptyNullSpaceWarning
from .covariance import input_covariances
from .decompose import DEFAULT_DAMPING, INVERSE_TOLERANCE, null_space, preconditioned_svd
from .fingerprint import base_fingerprint
from .layer import GuardSpaceLinear, NullSpaceProjector, residual_weight
from .surgery import adapter_parameters, swap_modules, train_only_adapters

__all__ = ["apply_guardspace", "LayerReport", "find_targets", "adapter_parameters"]

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


def find_targets(
    model: nn.Module, target_modules: Sequence[str] | None = None
) -> dict[str, nn.Linear]:
    """The Linears to adapt: those whose name is, or ends with ``.`` + , an entry of
    ``target_modules``; by default every ``nn.Linear`` except the output embedding (LM head).

    Refuses a model that already has GuardSpace layers, and a peft model: GuardSpace adapters take
    the place of LoRA's, and nested inside it would replace LoRA's own Linears."""
    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules must be a list of names, got the string {target_modules!r}; "
            f"pass [{target_modules!r}]"
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, GuardSpaceLinear):
            raise ValueError(
                f"{name} is already a GuardSpace layer: apply GuardSpace to the base model once"
            )
        if type(module).__module__.split(".")[0] == "peft":
            raise ValueError(
                f"{name or 'the model'} is a peft {type(module).__name__}: GuardSpace adapters replace LoRA "
                "adapters rather than nest inside them; apply GuardSpace to the base model (merge_and_unload() "
                "or unload() the peft model first)"
            )
        if target_modules is None:
            if (
                isinstance(module, nn.Linear)
                and module is not head
                and not name.endswith("lm_head")
            ):
                found[name] = module
        elif any(name == t or name.endswith("." + t) for t in target_modules):
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"{name} matches target_modules but is a {type(module).__name__}, not nn.Linear"
                )
            found[name] = module
    if not found:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no target Linear found for target_modules={target_modules}; this model's are {linear}"
        )
    return found


def _check_rank(rank: Any, layers: Mapping[str, nn.Linear]) -> None:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an int, got {rank!r} ({type(rank).__name__})")
    too_small = {
        n: tuple(m.weight.shape)
        for n, m in layers.items()
        if rank > min(m.in_features, m.out_features)
    }
    if rank < 1 or too_small:
        raise ValueError(
            f"rank {rank} must be in [1, min(in, out)] of every target; too large for {too_small}"
        )


def _bounded(batches: Batches, max_batches: int | None, role: str) -> Batches:
    """``batches``, cut to ``max_batches``; an endless iterable without that bound is refused."""
    if max_batches is not None:
        if (
            isinstance(max_batches, bool)
            or not isinstance(max_batches, numbers.Integral)
            or max_batches < 1
        ):
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        return itertools.islice(batches, int(max_batches))
    if isinstance(batches, (SafetyBatches, itertools.cycle)):
        raise ValueError(
            f"{role} is a {type(batches).__name__}, which is endless (it cycles its data forever), so the "
            f"covariance pass would never end: pass max_batches=N to read N batches of it, or a finite "
            "iterable (a list of batches, a DataLoader)"
        )
    return batches


def _null_projectors(
    model: nn.Module,
    layers: Mapping[str, nn.Linear],
    null_batches: Batches,
    *,
    dtype: torch.dtype,
    rel_tol: float,
    abs_tol: float,
    energy: float | None,
    on_empty: str,
    progress: bool,
) -> tuple[dict[str, NullSpaceProjector], dict[str, str]]:
    """Step 3 for every group of layers sharing an input: ``({leader: projector}, {layer: leader})``."""
    null_covs, leader = input_covariances(
        model,
        layers,
        null_batches,
        dtype=dtype,
        desc="GuardSpace null-space covariances",
        progress=progress,
    )
    projectors: dict[str, NullSpaceProjector] = {}
    for name in list(null_covs):
        weight = layers[name].weight
        space = null_space(null_covs.pop(name), rel_tol=rel_tol, abs_tol=abs_tol, energy=energy)
        projectors[name] = NullSpaceProjector(space, dtype=weight.dtype).to(weight.device)
    empty = [name for name in layers if projectors[leader[name]].dim == 0]
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
    return projectors, leader


def _adapter_layers(
    layers: Mapping[str, nn.Linear],
    covs: dict[str, Tensor],
    leader: Mapping[str, str],
    projectors: Mapping[str, NullSpaceProjector],
    rank: int,
    damping: float,
    inverse_tol: float,
) -> tuple[dict[str, GuardSpaceLinear], dict[str, LayerReport]]:
    """Steps 2 and the residual for every layer: the new layers and their reports; the model is
    not touched. Each covariance is freed after its group's last layer."""
    replacements: dict[str, GuardSpaceLinear] = {}
    report: dict[str, LayerReport] = {}
    uses = {key: list(leader.values()).count(key) for key in covs}
    for name, linear in layers.items():
        weight, group = linear.weight, leader[name]
        cov = covs[group]
        uses[group] -= 1
        if uses[group] == 0:
            del covs[group]
        a, b, used = preconditioned_svd(
            weight.to(cov), cov, rank, damping=damping, inverse_tol=inverse_tol
        )
        projector = projectors[group]
        a, b = a.to(weight.dtype), b.to(weight.dtype)
        bias = None if linear.bias is None else linear.bias.detach()
        replacements[name] = GuardSpaceLinear(
            residual_weight(weight, a, b, projector),
            bias,
            a,
            b,
            projector,
            base_fingerprint=base_fingerprint(linear),
        )
        report[name] = LayerReport(
            linear.in_features,
            linear.out_features,
            used,
            projector.dim,
            group,
            projector.basis.numel(),
        )
    return replacements, report


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
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, LayerReport]:
    """Replace the target Linears of ``model`` by :class:`GuardSpaceLinear` adapters, in place.

    GuardSpace (Zhang et al., arXiv 2510.14301, Sec. 3): each Linear becomes a frozen residual
    :math:`W' = W - A_0B_0P` plus trainable :math:`A, B`, the smallest ``rank`` components of the
    covariance-preconditioned SVD of :math:`W`, acting through :math:`P`, the projector onto the null
    space of the null data's inputs. The output is unchanged at initialisation, and training cannot
    change any layer's output on the null data. All or nothing: on any error the model is left as it
    was (see the module docstring).

    Args:
        model: called as ``model(**batch)``; e.g. a Hugging Face causal LM (not a peft model).
        safety_batches: model-input dicts of the safety calibration data (the paper: harmful
            prompts); their covariance picks the adapter's components. Iterated once.
        null_batches: model-input dicts of the null-space data (the paper: harmful prompts as
            well); after training, every adapted layer's output on them is unchanged. Iterated once.
            In both, ``attention_mask`` (shaped like ``input_ids``) is 1 on the tokens to count.
        rank: adapter rank, an int in ``[1, min(in_features, out_features)]`` of every target.
        target_modules: a list of names (or name suffixes) of the Linears; default every Linear
            but the LM head.
        damping: the initial relative damping of the covariance (:func:`.preconditioned_svd`).
        inverse_tol: the damping doubles until the inverse's Frobenius error is below this.
        null_rel_tol: the null-space threshold is ``max(null_abs_tol, null_rel_tol * lambda_max)``
            (:func:`.null_space`). Default: the paper's 1e-6 for float32 covariances, 1e-10 for
            float64 (see the module docstring).
        null_abs_tol: the absolute floor of that threshold.
        null_energy: instead, protect the leading directions carrying this share of the null
            data's spectral energy (e.g. 0.99); use it when the null data span the input space.
        on_empty: ``"warn"`` (default) or ``"raise"`` when a layer's null space is empty (its
            adapter can then change nothing); ``"ignore"`` to accept it silently.
        covariance_dtype: accumulation dtype (float64; float32 halves the memory).
        max_batches: read at most this many batches of each iterable; needed for an endless one
            such as a :class:`spag_optim.SafetyBatches` (whose position is left where it was).
        progress: show a progress bar per pass (needs ``tqdm``).

    Returns:
        ``{layer name: LayerReport}``. Afterwards only ``adapter_A``/``adapter_B`` require grad
        (:func:`adapter_parameters` lists them).

    Raises:
        TypeError: ``rank`` is not an int, or ``target_modules`` is a string.
        ValueError: a bad argument, a peft or already adapted model, an endless iterable without
            ``max_batches``, batches whose masks leave no token or do not fit ``input_ids``,
            non-finite inputs, or (``on_empty="raise"``) an empty null space.

    Example:
        >>> report = apply_guardspace(model, safety_batches, null_batches, rank=8, null_energy=0.99)
        >>> optimizer = torch.optim.AdamW(adapter_parameters(model), lr=1e-4)
    """
    if on_empty not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_empty must be 'warn', 'raise' or 'ignore', got {on_empty!r}")
    if null_rel_tol is None:
        null_rel_tol = 1e-10 if covariance_dtype == torch.float64 else 1e-6
    layers = find_targets(model, target_modules)
    _check_rank(rank, layers)
    with contextlib.ExitStack() as kept:  # a SafetyBatches read here is left where it was
        for batches in {id(b): b for b in (null_batches, safety_batches)}.values():
            if isinstance(batches, SafetyBatches):
                kept.enter_context(batches.kept_position())
        null_batches = _bounded(null_batches, max_batches, "null_batches")
        safety_batches = _bounded(safety_batches, max_batches, "safety_batches")
        projectors, null_leader = _null_projectors(
            model,
            layers,
            null_batches,
            dtype=covariance_dtype,
            rel_tol=null_rel_tol,
            abs_tol=null_abs_tol,
            energy=null_energy,
            on_empty=on_empty,
            progress=progress,
        )
        covs, leader = input_covariances(
            model,
            layers,
            safety_batches,
            dtype=covariance_dtype,
            desc="GuardSpace safety covariances",
            progress=progress,
        )
        if leader != null_leader:
            raise ValueError(
                "the layers sharing an input differ between the safety and null batches"
            )
        replacements, report = _adapter_layers(
            layers, covs, leader, projectors, rank, damping, inverse_tol
        )
    swap_modules(model, replacements)
    train_only_adapters(model)
    return report
