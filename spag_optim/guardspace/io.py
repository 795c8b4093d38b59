"""Saving, loading and merging GuardSpace adapters (arXiv 2510.14301).

* :func:`save_guardspace` writes only what the base model does not have: per layer the trained
  ``A, B``, the initial ``A_0, B_0``, and each shared projector's factored basis once; a few
  percent of the model, like a LoRA adapter.
* :func:`load_guardspace` puts the adapters back onto a fresh copy of the *same* base model,
  rebuilding :math:`W' = W - A_0B_0P` bit for bit (:func:`.layer.residual_weight`).
* :func:`merge_guardspace` folds :math:`W' + ABP` into plain ``nn.Linear`` layers, so
  ``model.save_pretrained(...)`` then writes an ordinary Hugging Face checkpoint.
"""

from __future__ import annotations

import os
from typing import Union

import torch
from torch import nn

from .apply import set_submodule
from .decompose import NullSpace
from .layer import GuardSpaceLinear, NullSpaceProjector, residual_weight

__all__ = ["save_guardspace", "load_guardspace", "merge_guardspace", "FORMAT"]

#: The ``format`` entry of a saved adapter file.
FORMAT = "spard-guardspace-1"

PathLike = Union[str, "os.PathLike[str]"]


def _layers(model: nn.Module) -> dict[str, GuardSpaceLinear]:
    layers = {n: m for n, m in model.named_modules() if isinstance(m, GuardSpaceLinear)}
    if not layers:
        raise ValueError("the model has no GuardSpace layers: call apply_guardspace first")
    return layers


def save_guardspace(model: nn.Module, path: PathLike) -> None:
    """Write the GuardSpace adapters of ``model`` to ``path`` (one ``torch.save`` file)."""
    layers, projectors, ids = {}, {}, {}
    for name, layer in _layers(model).items():
        key = ids.setdefault(id(layer.projector), name)
        if key == name:
            p = layer.projector
            projectors[key] = {"basis": p.basis.detach().cpu(), "complement": p.complement, "dim": p.dim}
        layers[name] = {
            "A": layer.adapter_A.detach().cpu(), "B": layer.adapter_B.detach().cpu(),
            "init_A": layer.init_A.cpu(), "init_B": layer.init_B.cpu(), "projector": key,
        }
    torch.save({"format": FORMAT, "layers": layers, "projectors": projectors}, path)


@torch.no_grad()
def load_guardspace(model: nn.Module, path: PathLike) -> nn.Module:
    """Put the adapters saved at ``path`` onto ``model`` (the base model they were built from), in
    place; only the adapters require grad afterwards. Returns ``model``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GuardSpace adapter file (expected format {FORMAT!r})")
    modules = dict(model.named_modules())
    projectors: dict[str, NullSpaceProjector] = {}
    for name, saved in state["layers"].items():
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{path} adapts {name}, which is not an nn.Linear of this model: load it onto its base model")
        weight = linear.weight
        if saved["init_A"].shape[0] != weight.shape[0] or saved["init_B"].shape[1] != weight.shape[1]:
            raise ValueError(f"{name}: saved adapter does not fit a {tuple(weight.shape)} weight")
        key = saved["projector"]
        if key not in projectors:
            p = state["projectors"][key]
            space = NullSpace(p["basis"], bool(p["complement"]), int(p["dim"]))
            projectors[key] = NullSpaceProjector(space, dtype=weight.dtype).to(weight.device)
        projector = projectors[key]
        init_a, init_b = (saved[k].to(weight.device, weight.dtype) for k in ("init_A", "init_B"))
        layer = GuardSpaceLinear(residual_weight(weight, init_a, init_b, projector),
                                 None if linear.bias is None else linear.bias.detach(), init_a, init_b, projector)
        layer.adapter_A.copy_(saved["A"])
        layer.adapter_B.copy_(saved["B"])
        set_submodule(model, name, layer)
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in _layers(model).values():
        layer.adapter_A.requires_grad_(True)
        layer.adapter_B.requires_grad_(True)
    return model


@torch.no_grad()
def merge_guardspace(model: nn.Module) -> nn.Module:
    """Replace every GuardSpace layer by a plain ``nn.Linear`` with weight :math:`W' + ABP` (computed
    in float64, stored in the layer's dtype), in place; returns ``model``. Follow with
    ``model.save_pretrained(folder)`` for a checkpoint any Hugging Face loader reads."""
    for name, layer in _layers(model).items():
        weight = layer.weight
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(layer.merged_weight().to(weight.dtype))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.requires_grad_(False)
        set_submodule(model, name, linear)
    return model
