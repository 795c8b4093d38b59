"""The functional pieces of SPAG's projection, one at a time, against literal float64 arithmetic."""

import math

import pytest
import torch

from spag_optim import functional as F


def test_trust_region_cap_relative_is_rho_step_over_grad_norm():
    sq_norm = torch.tensor(4.0, dtype=torch.float64)  # ||g|| = 2
    step_norm = torch.tensor(0.3, dtype=torch.float64)
    cap = F.trust_region_cap("relative", sq_norm, rho=0.5, step_norm=step_norm, lr=1.0)
    assert isinstance(cap, torch.Tensor) and cap.dtype == torch.float64
    assert float(cap) == pytest.approx(0.5 * 0.3 / 2.0, rel=1e-15)
    # alpha * ||g|| never exceeds rho * ||theta+ - theta||, whatever the excess loss
    alpha, finite = F.projection_alpha(
        torch.tensor(100.0), sq_norm, tau=0.0, tolerance=0.0, eps=0.0, cap=cap
    )
    assert bool(finite) and float(alpha) * 2.0 == pytest.approx(0.5 * 0.3, rel=1e-15)


def test_trust_region_cap_zero_gradient_is_ignored_by_alpha():
    sq_norm = torch.tensor(0.0, dtype=torch.float64)
    cap = F.trust_region_cap(
        "relative", sq_norm, rho=1.0, step_norm=torch.tensor(1.0, dtype=torch.float64)
    )
    assert math.isinf(float(cap))
    alpha, _ = F.projection_alpha(
        torch.tensor(5.0), sq_norm, tau=0.0, tolerance=0.0, eps=0.0, cap=cap
    )
    assert float(alpha) == 0.0


@pytest.mark.parametrize("trust_region, expected", [(0.25, 0.25), (None, None), ("lr", 0.01)])
def test_trust_region_cap_float_none_and_lr(trust_region, expected):
    assert F.trust_region_cap(trust_region, torch.tensor(1.0), lr=0.01) == expected


@pytest.mark.parametrize("trust_region, missing", [("relative", "step_norm"), ("lr", "lr")])
def test_trust_region_cap_names_the_missing_input(trust_region, missing):
    with pytest.raises(ValueError, match=missing):
        F.trust_region_cap(trust_region, torch.tensor(1.0))
