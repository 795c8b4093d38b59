r"""The modules GuardSpace puts in place of an ``nn.Linear`` (arXiv 2510.14301, Sec. 3).

:class:`GuardSpaceLinear` computes :math:`y = W'x + b + AB(Px)` with the frozen residual
:math:`W' = W - A_0B_0P`: at initialisation (:math:`A = A_0`, :math:`B = B_0`) the output is
:math:`Wx + b` exactly up to rounding, and after training it is
:math:`Wx + b + (AB - A_0B_0)Px`, unchanged for every input the projector :math:`P` annihilates.

:class:`NullSpaceProjector` holds :math:`P` factored, never as the dense ``d x d`` matrix of the
authors' code: ``Px = QQ^T x`` or ``Px = x - QQ^T x``, whichever ``Q`` has fewer columns, and one
projector is shared by every Linear that reads the same input (q/k/v, gate/up). The projection itself is
recomputed by each of them (``2 * d * m`` multiply-adds per token, ``m`` the stored columns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decompose import NullSpace

__all__ = ["NullSpaceProjector", "GuardSpaceLinear", "project_rows", "residual_weight"]


class NullSpaceProjector(nn.Module):
    """:math:`P`, the orthogonal projector onto a null space, from a :class:`NullSpace`."""

    def __init__(self, space: NullSpace, dtype: torch.dtype | None = None):
        super().__init__()
        self.register_buffer("basis", space.basis.to(dtype or space.basis.dtype).contiguous())
        self.complement = space.complement
        self.dim = space.dim

    def forward(self, x: Tensor) -> Tensor:
        q = self.basis
        along = (x.to(q.dtype) @ q) @ q.T
        return (x - along.to(x.dtype)) if self.complement else along.to(x.dtype)

    def space(self) -> NullSpace:
        return NullSpace(self.basis, self.complement, self.dim)

    def extra_repr(self) -> str:
        form = "x - QQ^T x" if self.complement else "QQ^T x"
        return f"d={self.basis.shape[0]}, null_dim={self.dim}, stored={tuple(self.basis.shape)} ({form})"


class GuardSpaceLinear(nn.Module):
    """A Linear split into a frozen residual and a trainable adapter on the null space.

    Args:
        weight: the residual :math:`W' = W - A_0B_0P`, ``(out_features, in_features)``; frozen.
        bias: the original bias (frozen) or None.
        adapter_A: :math:`A_0`, ``(out_features, rank)``; trainable (``adapter_A``).
        adapter_B: :math:`B_0`, ``(rank, in_features)``; trainable (``adapter_B``).
        projector: the (possibly shared) :class:`NullSpaceProjector` for this layer's input.
        base_fingerprint: :func:`.fingerprint.base_fingerprint` of the base Linear, saved with the
            adapter so that loading can check the base (None: unknown).

    ``init_A``/``init_B`` keep :math:`A_0, B_0`, so a saved adapter can rebuild :math:`W'` from the
    base weight (:func:`spag_optim.guardspace.load_guardspace`).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        adapter_A: Tensor,
        adapter_B: Tensor,
        projector: NullSpaceProjector,
        base_fingerprint: str | None = None,
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.adapter_A = nn.Parameter(adapter_A.clone())
        self.adapter_B = nn.Parameter(adapter_B.clone())
        self.register_buffer("init_A", adapter_A.clone())
        self.register_buffer("init_B", adapter_B.clone())
        self.projector = projector
        self.base_fingerprint = base_fingerprint

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(
            F.linear(self.projector(x), self.adapter_B), self.adapter_A
        )

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """:math:`W' + ABP` in float64: the weight of the plain Linear this layer equals."""
        return self.weight.double() + self.adapter_A.double() @ project_rows(
            self.projector, self.adapter_B.double()
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.adapter_A.shape[1]}"


def project_rows(projector: NullSpaceProjector, rows: Tensor) -> Tensor:
    """``rows @ P`` in the dtype of ``rows`` (``P`` is symmetric, so this projects every row)."""
    q = projector.basis.to(rows.dtype)
    along = (rows @ q) @ q.T
    return rows - along if projector.complement else along


def residual_weight(
    weight: Tensor, init_A: Tensor, init_B: Tensor, projector: NullSpaceProjector
) -> Tensor:
    """:math:`W' = W - A_0B_0P`, computed in float64 and cast to ``weight``'s dtype. Deterministic in
    its inputs, so loading a saved adapter onto the base weight rebuilds the same :math:`W'`."""
    delta = init_A.double() @ project_rows(projector, init_B.double())
    return (weight.double() - delta).to(weight.dtype)
