"""Saving, loading and merging GuardSpace adapters (arXiv 2510.14301).

* :func:`save_guardspace` writes only what the base model does not have: per layer the trained
  ``A, B``, the initial ``A_0, B_0``, the base weights' fingerprint (:mod:`.fingerprint`), and each
  shared projector's factored basis once; a few percent of the model, like a LoRA adapter. The file
  is written atomically (:func:`spard_io.write_atomic`): a failed save leaves the previous file.
* :func:`load_guardspace` puts the adapters back onto a fresh copy of the *same* base model,
  rebuilding :math:`W' = W - A_0B_0P` bit for bit (:func:`.layer.residual_weight`). Every entry of
  the file is checked, and the fingerprints compared, before the model changes; a truncated or
  edited file is one ``ValueError`` naming it.
* :func:`merge_guardspace` folds :math:`W' + ABP` into plain ``nn.Linear`` layers, so
  ``model.save_pretrained(...)`` then writes an ordinary Hugging Face checkpoint.

All three change the model all or nothing (:mod:`.surgery`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from spard_io import write_atomic

from .._caller_warning import warn_at_caller
from ..warnings import UnverifiedBaseWarning
from .decompose import NullSpace
from .fingerprint import SAMPLE_SIZE, base_fingerprint
from .layer import GuardSpaceLinear, NullSpaceProjector, residual_weight
from .surgery import swap_modules, train_only_adapters

__all__ = ["save_guardspace", "load_guardspace", "merge_guardspace", "FORMAT"]

#: The ``format`` entry of a saved adapter file. Version 2 added each layer's ``base_fingerprint``
#: (of a strided sample of the weights); version 3 fingerprints every weight.
FORMAT = "spard-guardspace-3"
#: Version 2 files are checked against the sampled fingerprint they recorded.
_FORMAT_V2 = "spard-guardspace-2"
#: Version 1 files (no fingerprints) still load, with a warning that the base cannot be checked.
_FORMAT_V1 = "spard-guardspace-1"

PathLike = Union[str, "os.PathLike[str]"]


def _layers(model: nn.Module) -> dict[str, GuardSpaceLinear]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, GuardSpaceLinear)}
    if not layers:
        raise ValueError("the model has no GuardSpace layers: call apply_guardspace first")
    return layers


def save_guardspace(model: nn.Module, path: PathLike) -> None:
    """Write the GuardSpace adapters of ``model`` to ``path`` (one ``torch.save`` file), atomically:
    on any failure (a full disk) a file already at ``path`` is left as it was."""
    layers, projectors, ids = {}, {}, {}
    for name, layer in _layers(model).items():
        key = ids.setdefault(id(layer.projector), name)
        if key == name:
            p = layer.projector
            projectors[key] = {
                "basis": p.basis.detach().cpu(),
                "complement": p.complement,
                "dim": p.dim,
            }
        layers[name] = {
            "A": layer.adapter_A.detach().cpu(),
            "B": layer.adapter_B.detach().cpu(),
            "init_A": layer.init_A.cpu(),
            "init_B": layer.init_B.cpu(),
            "projector": key,
            "base_fingerprint": layer.base_fingerprint,
        }
    state = {"format": FORMAT, "layers": layers, "projectors": projectors}
    write_atomic(path, lambda handle: torch.save(state, handle))


def _read(path: PathLike) -> dict[str, Any]:
    """The file's dict, or one ValueError naming the file (a missing file stays FileNotFoundError)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot be read as a GuardSpace adapter file; it is truncated or corrupted "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): save it again"
        ) from exc
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, _FORMAT_V2, _FORMAT_V1):
        raise ValueError(f"{path} is not a GuardSpace adapter file (expected format {FORMAT!r})")
    return state


def _matrix(entry: Mapping[str, Any], key: str, shape: tuple[int | None, int | None]) -> str | None:
    """What is wrong with ``entry[key]`` as a finite floating matrix of ``shape`` (None: any)."""
    value = entry.get(key)
    if not isinstance(value, Tensor) or value.dim() != 2 or not value.is_floating_point():
        return f"{key} is not a floating-point matrix"
    if any(want is not None and got != want for got, want in zip(value.shape, shape)):
        return f"{key} has shape {tuple(value.shape)}, expected {tuple('*' if w is None else w for w in shape)}"
    if not bool(torch.isfinite(value).all()):
        return f"{key} has non-finite entries"
    return None


def _projector_problem(p: Any, in_features: int) -> str | None:
    if (
        not isinstance(p, Mapping)
        or not isinstance(p.get("complement"), bool)
        or type(p.get("dim")) is not int
    ):
        return "is not a dict with basis, complement (bool) and dim (int)"
    stored = in_features - p["dim"] if p["complement"] else p["dim"]
    if not 0 <= p["dim"] <= in_features:
        return f"has dim {p['dim']} outside [0, {in_features}]"
    return _matrix(p, "basis", (in_features, stored))


def _layer_problem(saved: Any, projectors: Mapping[str, Any]) -> str | None:
    """What is wrong with one layer's entry in itself (None: consistent)."""
    if not isinstance(saved, Mapping):
        return "is not a dict"
    init_a, init_b = saved.get("init_A"), saved.get("init_B")
    out, rank = init_a.shape if isinstance(init_a, Tensor) and init_a.dim() == 2 else (None, None)
    d_in = init_b.shape[1] if isinstance(init_b, Tensor) and init_b.dim() == 2 else None
    for key, shape in (
        ("init_A", (out, rank)),
        ("A", (out, rank)),
        ("init_B", (rank, d_in)),
        ("B", (rank, d_in)),
    ):
        problem = _matrix(saved, key, shape)
        if problem:
            return problem
    if saved.get("projector") not in projectors:
        return f"names a projector {saved.get('projector')!r} the file does not hold"
    problem = _projector_problem(projectors[saved["projector"]], d_in)
    if problem:
        return f"its projector {saved['projector']!r} {problem}"
    return None


def _check_file(state: Mapping[str, Any], path: PathLike, modules: Mapping[str, nn.Module]) -> None:
    """Raise one ValueError naming ``path`` and the first bad entry, before anything changes: a
    damaged file, or a model other than the one it was built on (names or sizes)."""
    layers, projectors = state.get("layers"), state.get("projectors")
    if not isinstance(layers, Mapping) or not layers or not isinstance(projectors, Mapping):
        raise ValueError(
            f"{path}: holds no GuardSpace layers; the file is damaged or was edited: save it again"
        )
    for name, saved in layers.items():
        problem = _layer_problem(saved, projectors)
        if problem:
            raise ValueError(
                f"{path}: layer {name}: {problem}; the file is damaged or was edited: save it again"
            )
    for name, saved in layers.items():
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(
                f"{path}: adapts {name}, which is not an nn.Linear of this model: load the file onto "
                "the base model apply_guardspace ran on"
            )
        built = (saved["init_A"].shape[0], saved["init_B"].shape[1])
        if built != (linear.out_features, linear.in_features):
            raise ValueError(
                f"{path}: layer {name} was built on a {built[0]} x {built[1]} Linear (out x in); "
                f"this model's is {linear.out_features} x {linear.in_features}: the file belongs to "
                "another model. Load it onto the base model apply_guardspace ran on"
            )


def _check_base(
    state: Mapping[str, Any], path: PathLike, modules: Mapping[str, nn.Module], strict: bool
) -> None:
    """Compare the saved base fingerprints with the model's Linears; raise (or, not ``strict``, warn)."""
    saved = {name: entry.get("base_fingerprint") for name, entry in state["layers"].items()}
    unknown = [name for name, fingerprint in saved.items() if not isinstance(fingerprint, str)]
    if unknown:
        warn_at_caller(
            f"{path} holds no base fingerprint for {len(unknown)} layer(s) (e.g. {unknown[0]}; format "
            f"{state['format']!r}): cannot check that this model is the base they were built on; save "
            "the adapters again to record it",
            UnverifiedBaseWarning,
        )
    sample = SAMPLE_SIZE if state["format"] == _FORMAT_V2 else None
    differ = [
        name
        for name in saved
        if name not in unknown and saved[name] != base_fingerprint(modules[name], sample=sample)
    ]
    if not differ:
        return
    message = (
        f"{path} was built on a different base model: the weights of {len(differ)} layer(s) (e.g. "
        f"{differ[0]}) are not those it was saved with. Load it onto the base model apply_guardspace ran "
        "on, or pass check_base=False to load it anyway"
    )
    if strict:
        raise ValueError(message)
    warn_at_caller(message, UnverifiedBaseWarning)


def _loaded_layers(
    state: Mapping[str, Any], modules: Mapping[str, nn.Module]
) -> dict[str, GuardSpaceLinear]:
    """The GuardSpace layers the (checked) file describes, built on the model's base Linears."""
    projectors: dict[str, NullSpaceProjector] = {}
    replacements: dict[str, GuardSpaceLinear] = {}
    for name, saved in state["layers"].items():
        linear = modules[name]
        weight = linear.weight
        key = saved["projector"]
        if key not in projectors:
            p = state["projectors"][key]
            space = NullSpace(p["basis"], p["complement"], p["dim"])
            projectors[key] = NullSpaceProjector(space, dtype=weight.dtype).to(weight.device)
        projector = projectors[key]
        init_a, init_b = (saved[k].to(weight.device, weight.dtype) for k in ("init_A", "init_B"))
        bias = None if linear.bias is None else linear.bias.detach()
        layer = GuardSpaceLinear(
            residual_weight(weight, init_a, init_b, projector),
            bias,
            init_a,
            init_b,
            projector,
            base_fingerprint=base_fingerprint(linear),
        )
        layer.adapter_A.copy_(saved["A"])
        layer.adapter_B.copy_(saved["B"])
        replacements[name] = layer
    return replacements


@torch.no_grad()
def load_guardspace(model: nn.Module, path: PathLike, *, check_base: bool = True) -> nn.Module:
    """Put the adapters saved at ``path`` onto ``model`` (the base model they were built from), in
    place; only the adapters require grad afterwards. Returns ``model``.

    All or nothing: the file is checked entry by entry, the base weights' fingerprints compared
    (:mod:`.fingerprint`) and every layer built before the first is put in place. On a different
    base (same shapes, other weights) it raises; ``check_base=False`` warns and loads instead.
    """
    state = _read(path)
    modules = dict(model.named_modules())
    _check_file(state, path, modules)
    _check_base(state, path, modules, strict=check_base)
    swap_modules(model, _loaded_layers(state, modules))
    train_only_adapters(model)
    return model


@torch.no_grad()
def merge_guardspace(model: nn.Module) -> nn.Module:
    """Replace every GuardSpace layer by a plain ``nn.Linear`` with weight :math:`W' + ABP` (computed
    in float64, stored in the layer's dtype), in place, all or nothing; returns ``model``. Follow
    with ``model.save_pretrained(folder)`` for a checkpoint any Hugging Face loader reads.

    Afterwards no parameter requires grad: :func:`.apply_guardspace` froze the base model and the
    merged Linears are frozen too. To fine-tune the merged model further, unfreeze what you train,
    e.g. ``model.requires_grad_(True)``.
    """
    replacements = {}
    for name, layer in _layers(model).items():
        weight = layer.weight
        linear = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        linear.weight.copy_(layer.merged_weight().to(weight.dtype))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.requires_grad_(False)
        replacements[name] = linear
    swap_modules(model, replacements)
    return model
