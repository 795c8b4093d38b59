"""A literal float64 reference of GuardSpace's steps 1-3 (arXiv 2510.14301, Sec. 3), for the tests.

Transcribed from the paper's description, one token and one line at a time, with dense matrices
everywhere (no shared inputs, no factored projector, no streaming); only for small layers.
"""

from __future__ import annotations

import torch


def covariance(inputs: list[torch.Tensor]) -> torch.Tensor:
    """Step 1: C = (1/N) sum_t x_t x_t^T over every token row of every input (float64)."""
    rows = [row.to(torch.float64) for x in inputs for row in x]
    d = rows[0].shape[0]
    c = torch.zeros(d, d, dtype=torch.float64)
    for x in rows:
        c += torch.outer(x, x)
    return c / len(rows)


def inverse_error(c: torch.Tensor, damp: float) -> float:
    d = c.shape[0]
    c = c / torch.mean(torch.diag(c))
    lam = torch.mean(torch.diag(c)) * damp
    fixed = c + torch.diag(torch.ones(d, dtype=c.dtype) * lam)
    return float(torch.dist(fixed @ torch.linalg.inv(fixed), torch.eye(d, dtype=c.dtype)))


def adapter(w: torch.Tensor, c: torch.Tensor, r: int, tol: float = 0.05):
    """Step 2: damp C until the inverse is accurate, SVD of W(C + lam I), V <- (C + lam I)^-1 V,
    keep the r smallest components: A = U_r S_r^1/2, B = S_r^1/2 V_r^T. Returns (A, B, damp).
    C is first divided by its mean diagonal (the library's replacement of per-batch max scaling)."""
    d = c.shape[0]
    c = c / torch.mean(torch.diag(c))
    damp = 0.01
    while True:
        lam = torch.mean(torch.diag(c)) * damp
        fixed = c + torch.diag(torch.ones(d, dtype=c.dtype) * lam)
        inv = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inv, torch.eye(d, dtype=c.dtype)) < tol:
            break
        damp = damp * 2
    u, s, vt = torch.linalg.svd(w @ fixed, full_matrices=False)
    v = (vt @ inv).T
    u_r, s_r, v_r = u[:, -r:], s[-r:], v[:, -r:]
    a = u_r @ torch.diag(torch.sqrt(s_r))
    b = torch.diag(torch.sqrt(s_r)) @ v_r.T
    return a, b, damp


def projector(c_null: torch.Tensor) -> torch.Tensor:
    """Step 3: eigenvectors of C_null with eigenvalue <= max(1e-8, 1e-6 lambda_max); P = Q Q^T."""
    evals, evecs = torch.linalg.eigh(0.5 * (c_null + c_null.T))
    threshold = max(1e-8, 1e-6 * float(evals.abs().max()))
    columns = [evecs[:, i] for i in range(len(evals)) if evals[i] <= threshold]
    d = c_null.shape[0]
    if not columns:
        return torch.zeros(d, d, dtype=torch.float64)
    q = torch.stack(columns, dim=1)
    return q @ q.T


def energy_null_dim(c_null: torch.Tensor, energy: float) -> int:
    """The energy rule by brute force: the fewest leading eigenvalues whose sum reaches
    ``energy`` of the total are protected; the null space is the rest."""
    evals = sorted((max(float(e), 0.0) for e in torch.linalg.eigvalsh(c_null)), reverse=True)
    total = sum(evals)
    for k in range(1, len(evals) + 1):
        if sum(evals[:k]) >= energy * total:
            return len(evals) - k
    return 0


def residual(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """W' = W - A B P."""
    return w - a @ b @ p


def fix_signs(a: torch.Tensor, b: torch.Tensor):
    """SVD components are defined up to a joint sign: make each column of A's largest entry positive."""
    idx = a.abs().argmax(dim=0)
    s = torch.sign(a[idx, torch.arange(a.shape[1])])
    return a * s, b * s[:, None]
