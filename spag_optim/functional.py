r"""Functional core of SPAG's safety projection (the arithmetic, no optimizer bookkeeping).

Paper mode (SPARD, Algorithm 1 and Eq. 3-4). After the utility step produced
:math:`\theta^+`, with safety loss :math:`\ell = L_{safe}(\theta^+)` and gradient
:math:`g = \nabla L_{safe}(\theta^+)` flattened over every parameter:

.. math::
    \alpha = \begin{cases}
        \min\left(\dfrac{\ell - \tau}{\lVert g\rVert^2 + \epsilon},\ \eta_{safe}\right)
            & \ell > \tau + \text{tolerance} \\
        0 & \text{otherwise}
    \end{cases}
    \qquad \theta \leftarrow \theta^+ - \alpha\, g

which is the Euclidean projection of :math:`\theta^+` onto the half-space
:math:`\{\theta : \ell + g^\top(\theta - \theta^+) \le \tau\}` (Eq. 4), shortened to at most
:math:`\eta_{safe}` (the trust region). Everything here runs on device: the branch is a
``torch.where`` / clamp, as in ``torch.nn.utils.clip_grad_norm_``, so the projection never waits
for the host. A non-finite loss or gradient yields :math:`\alpha = 0` and a zeroed gradient, so the
parameters stay at :math:`\theta^+`.

Repeated projection (``projection_iterations`` :math:`K > 1`). One linearised projection lands
on the tangent half-space, not on :math:`\{\ell \le \tau\}`: where the loss is convex along the
step (a refusal's negative log-likelihood near zero is), the linear prediction
:math:`\ell - \alpha\lVert g\rVert^2 = \tau` is a lower bound, so the loss after the projection
is still above :math:`\tau`. The repeated rule applies Eq. 4 again at the point it reached, on the
*same* safe batch, each time with the step's trust region:

.. math::
    \theta^{(0)} = \theta^+, \qquad
    \theta^{(k+1)} = \theta^{(k)} - \alpha_k\, g_k, \quad
    g_k = \nabla L_{safe}(\theta^{(k)}),\ \alpha_k \text{ of Eq. 4 at } \theta^{(k)}

stopping at the first :math:`k` with :math:`L_{safe}(\theta^{(k)}) \le \tau + \text{tolerance}`
(:func:`repeated_projection_stops`) or at :math:`k = K`. Uncapped, each step is the minimum-norm
Newton-Raphson step for the single equation :math:`L_{safe}(\theta) = \tau`; :math:`K = 1` is the
paper's rule, operation for operation.

Authors'-code mode reproduces the released implementation (see the table of the docs' algorithm page): the gradient
of each parameter tensor is scaled by :math:`\min((\ell - \tau)/(\lVert g_p\rVert + \epsilon),
\alpha_{max})` and then handed to the inner optimizer's own step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._torch_compat import group_by_device_and_dtype

__all__ = [
    "accumulation_dtype",
    "global_sq_norm",
    "projection_alpha",
    "trust_region_cap",
    "apply_projection_",
    "repeated_projection_stops",
    "authors_code_scale_",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself for float32/float64: norms never sum in bf16."""
    return torch.promote_types(dtype, torch.float32)


def global_sq_norm(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """Sum of squares of all ``tensors`` as one 0-dim tensor on ``device`` (foreach per group).

    Accumulates in float32 for half-precision tensors and in float64 when any tensor is float64.
    """
    acc = torch.float32
    for t in tensors:
        acc = torch.promote_types(acc, accumulation_dtype(t.dtype))
    if not tensors:
        return torch.zeros((), dtype=acc, device=device)
    partials = []
    grouped = group_by_device_and_dtype([tensors])
    for (_, group_dtype), ([group], _) in grouped.items():
        norms = torch._foreach_norm(group, 2, dtype=accumulation_dtype(group_dtype))
        partials.append(torch.stack(norms).to(device=device, dtype=acc).square().sum())
    return torch.stack(partials).sum()


def projection_alpha(
    loss: Tensor,
    sq_norm: Tensor,
    *,
    tau: float,
    tolerance: float,
    eps: float,
    cap: float | Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Step size alpha of Eq. 4 and whether the inputs were finite, both 0-dim, on device.

    ``cap`` is eta_safe (a float or a 0-dim tensor) or ``None`` for no trust region. A zero
    gradient gives alpha = 0 (never a division by zero); a non-finite ``loss`` or ``sq_norm`` gives
    alpha = 0 and ``finite = False``.
    """
    loss = loss.detach().to(sq_norm.dtype)
    finite = torch.isfinite(loss) & torch.isfinite(sq_norm)
    excess = loss - tau
    triggered = finite & (excess > tolerance) & (sq_norm > 0)
    # Where not triggered the quotient is replaced before it can be inf or NaN.
    safe_denominator = torch.where(triggered, sq_norm + eps, torch.ones_like(sq_norm))
    alpha = torch.where(triggered, excess / safe_denominator, torch.zeros_like(sq_norm))
    if cap is not None:
        cap_t = torch.as_tensor(cap, dtype=alpha.dtype, device=alpha.device)
        alpha = torch.minimum(alpha, torch.where(torch.isfinite(cap_t), cap_t, alpha))
    return alpha, finite


def trust_region_cap(
    trust_region: float | str | None,
    sq_norm: Tensor,
    *,
    rho: float = 1.0,
    step_norm: Tensor | None = None,
    lr: float | None = None,
) -> float | Tensor | None:
    r"""The trust region :math:`\eta_{safe}` that caps alpha in Eq. 4 (SPARD, Algorithm 1).

    * a float: :math:`\eta_{safe}` itself; ``None``: no cap (Table 7, "w/o eta_safe");
    * ``"lr"``: the inner optimizer's learning rate ``lr`` (the paper's experimental setting);
    * ``"relative"``: the projection moves the parameters at most ``rho`` times as far as the
      utility step did, :math:`\alpha\lVert g\rVert \le \rho\lVert\theta^+ - \theta\rVert`, i.e.

      .. math:: \eta_{safe} = \rho\,\lVert\theta^+ - \theta\rVert / \lVert g\rVert

      with ``step_norm`` :math:`= \lVert\theta^+ - \theta\rVert` and ``sq_norm``
      :math:`= \lVert g\rVert^2` (0-dim tensors). Computed on device, no host read; a zero
      gradient gives an infinite cap, which :func:`projection_alpha` ignores (alpha is 0 then).
    """
    if trust_region == "relative":
        if step_norm is None:
            raise ValueError("trust_region='relative' needs step_norm, the utility step's length")
        return rho * step_norm / sq_norm.sqrt()
    if trust_region == "lr":
        if lr is None:
            raise ValueError("trust_region='lr' needs lr, the inner optimizer's learning rate")
        return lr
    return trust_region  # a float or None


def apply_projection_(params: Sequence[Tensor], grads: Sequence[Tensor], alpha: Tensor) -> None:
    """theta <- theta - alpha * g in place, for every (param, grad) pair; ``grads`` is consumed.

    Non-finite gradient entries are zeroed first (one elementwise pass, per tensor since torch has
    no foreach ``nan_to_num``) so that alpha = 0 really leaves the parameters unchanged: without it
    ``0 * nan`` would write NaN into the model.
    """
    if not params:
        return
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    grouped = group_by_device_and_dtype([params, grads])
    for (device, dtype), ([group_params, group_grads], _) in grouped.items():
        torch._foreach_mul_(group_grads, alpha.to(device=device, dtype=dtype))
        torch._foreach_sub_(group_params, group_grads)


def repeated_projection_stops(loss: float, *, tau: float, tolerance: float) -> bool:
    r"""Whether the repeated projection stops at a point whose safety loss is ``loss``: the
    constraint :math:`\ell \le \tau + \text{tolerance}` holds there, or ``loss`` is not finite
    (the point reached so far is kept; the step's first projection already reported the loss)."""
    return not (math.isfinite(loss) and loss - tau > tolerance)


def authors_code_scale_(
    grads: Sequence[Tensor], loss: float, *, tau: float, alpha_max: float, eps: float
) -> list[float]:
    """Scale each gradient tensor as the authors' release does; returns the per-tensor factors.

    factor_p = min((loss - tau) / (||g_p|| + eps), alpha_max), with the norm *not* squared and taken
    per tensor. This is host code on purpose: the released implementation is a Python loop.
    """
    factors = []
    for g in grads:
        norm = float(torch.linalg.vector_norm(g, dtype=accumulation_dtype(g.dtype)))
        denominator = norm + eps
        factor = alpha_max if denominator == 0.0 else min((loss - tau) / denominator, alpha_max)
        if not math.isfinite(factor):
            factor = 0.0
        g.mul_(factor)
        factors.append(factor)
    return factors
