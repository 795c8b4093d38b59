r"""The two per-layer factorisations of GuardSpace (arXiv 2510.14301, Sec. 3), as pure functions.

* :func:`preconditioned_svd` (step 2): the covariance-preconditioned SVD of a weight. ``C`` is
  first scaled to unit mean diagonal (see below), then damped with :math:`\lambda = d \cdot \mathrm{mean}(\mathrm{diag}\,C)`, ``d`` starting at 0.01 and
  doubling until :math:`\lVert (C+\lambda I)(C+\lambda I)^{-1} - I\rVert_F < 0.05`; then
  :math:`W(C+\lambda I) = U\Sigma V^\top` and :math:`V \leftarrow (C+\lambda I)^{-1}V`, so that
  :math:`U\Sigma V^\top = W` again. The *smallest* ``rank`` components become the adapter,
  :math:`A = U_r\Sigma_r^{1/2}`, :math:`B = \Sigma_r^{1/2}V_r^\top`: the large, safety-relevant
  components stay frozen.
* :func:`null_space` (step 3): the eigenvectors of ``C_null`` whose eigenvalues are at most
  :math:`\max(10^{-8}, 10^{-6}\lambda_{max})` span the null space of the null-space data; the
  projector onto it is :math:`P = \hat Q\hat Q^\top`. Stored factored (see :class:`NullSpace`).

Scale of C. :math:`AB` does not depend on C's overall scale, but the split does: scaling C by ``s``
scales ``A`` by :math:`\sqrt s` and ``B`` by :math:`1/\sqrt s`. The authors keep C near O(1) by
dividing every batch by its maximum (see :mod:`.covariance`); activations of size ``1e-2`` would
otherwise give ``B`` entries ~100x ``A``'s, so AdamW (which moves every entry by about the learning
rate) trains them lopsidedly, and any input leaking through :math:`P` is amplified by ``|B|``. Here
C is divided by its mean diagonal instead: the same purpose, independent of batching and of
activation size.

Both run in the dtype they are given; :func:`spag_optim.guardspace.apply_guardspace` passes float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["preconditioned_svd", "null_space", "NullSpace", "DEFAULT_DAMPING", "INVERSE_TOLERANCE"]

#: Initial damping, relative to the mean of the covariance's diagonal (the paper's 0.01).
DEFAULT_DAMPING = 0.01
#: The damping doubles until the Frobenius error of the inverse is below this (the paper's 0.05).
INVERSE_TOLERANCE = 0.05
#: Doubling the damping more than this many times means the covariance is not usable.
_MAX_DOUBLINGS = 60


def preconditioned_svd(
    weight: Tensor,
    cov: Tensor,
    rank: int,
    *,
    damping: float = DEFAULT_DAMPING,
    inverse_tol: float = INVERSE_TOLERANCE,
) -> tuple[Tensor, Tensor, float]:
    """Step 2 for one ``(d_out, d_in)`` weight and its ``(d_in, d_in)`` input covariance.

    Returns ``(A, B, damping)``: ``A`` is ``(d_out, rank)``, ``B`` is ``(rank, d_in)``, and
    ``damping`` is the relative damping that passed the inverse check (0.01 * 2**k).
    """
    d_out, d_in = weight.shape
    if cov.shape != (d_in, d_in):
        raise ValueError(
            f"covariance has shape {tuple(cov.shape)}, expected ({d_in}, {d_in}) for this weight"
        )
    if not 1 <= rank <= min(d_out, d_in):
        raise ValueError(
            f"rank must be in [1, {min(d_out, d_in)}] for a {d_out}x{d_in} weight, got {rank}"
        )
    scale = cov.diagonal().mean()
    if not torch.isfinite(scale) or scale <= 0:
        raise ValueError(
            "the safety covariance has a zero or non-finite diagonal: the layer saw no (finite) "
            "input; check that the safety batches reach it"
        )
    cov = cov / scale  # unit mean diagonal: see the module docstring
    eye = torch.eye(d_in, dtype=cov.dtype, device=cov.device)
    for _ in range(_MAX_DOUBLINGS):
        damped = cov + eye * damping
        inverse = torch.linalg.inv(damped)
        if torch.linalg.matrix_norm(damped @ inverse - eye) < inverse_tol:
            break
        damping *= 2
    else:
        raise ValueError(f"could not invert the damped covariance (damping reached {damping:g})")
    u, s, vh = torch.linalg.svd(weight @ damped, full_matrices=False)
    v = inverse @ vh.T  # (C + lambda I)^-1 V; the damped matrix is symmetric
    root = s[-rank:].sqrt()
    return u[:, -rank:] * root, root[:, None] * v[:, -rank:].T, damping


@dataclass
class NullSpace:
    """The null space of one null-space covariance, stored in the smaller factored form.

    ``basis`` has orthonormal columns. ``complement=False``: they span the null space and
    :math:`Px = QQ^\\top x`. ``complement=True``: they span its orthogonal complement (the span of the
    null-space data) and :math:`Px = x - QQ^\\top x`. ``dim`` is the null space's dimension.
    """

    basis: Tensor
    complement: bool
    dim: int

    def dense(self) -> Tensor:
        """The ``(d, d)`` projector (for tests and export; never needed in the forward pass)."""
        q = self.basis
        outer = q @ q.T
        return (
            torch.eye(q.shape[0], dtype=q.dtype, device=q.device) - outer
            if self.complement
            else outer
        )


def null_space(
    cov_null: Tensor,
    *,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-8,
    energy: float | None = None,
) -> NullSpace:
    """Step 3: the null space of ``cov_null``.

    Default rule (the paper's): eigenvalues at most ``max(abs_tol, rel_tol * max|eigenvalue|)``.
    With ``energy`` (in (0, 1]) instead: the null space is everything outside the fewest leading
    eigenvectors that carry at least that share of the spectrum's total (the trace). This is the
    alternative when the null-space data span the whole input space (more tokens than dimensions),
    where the paper's rule gives an empty null space and the adapter can do nothing.
    """
    d = cov_null.shape[0]
    if cov_null.shape != (d, d):
        raise ValueError(f"null-space covariance must be square, got shape {tuple(cov_null.shape)}")
    if not bool(torch.isfinite(cov_null).all()):
        raise ValueError(
            "the null-space covariance has non-finite entries: check that the null-space data are finite"
        )
    evals, evecs = torch.linalg.eigh(0.5 * (cov_null + cov_null.T))  # ascending
    if energy is None:
        threshold = max(abs_tol, rel_tol * float(evals.abs().max()))
        dim = int((evals <= threshold).sum())
    else:
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        spectrum = evals.flip(0).clamp_min(0)
        total = float(spectrum.sum())
        if total <= 0:
            dim = d
        else:
            share = spectrum.cumsum(0) / total
            kept = int((share < energy).sum()) + 1
            dim = d - min(kept, d)
    # eigh sorts ascending: the null space is the first ``dim`` eigenvectors.
    if dim <= d - dim:
        return NullSpace(evecs[:, :dim].contiguous(), complement=False, dim=dim)
    return NullSpace(evecs[:, dim:].contiguous(), complement=True, dim=dim)
