"""SPAG with mixed precision and with fused/foreach inner optimizers.

Each optimised path is compared with the literal float64 reference of ``spag_reference.py`` run on
the same (autocast) losses: the reference differentiates the same low-precision forward, then does
the projection arithmetic in float64 Python.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

from spag_optim import SPAGOptimizer

from helpers.spag_reference import flat, reference_paper_step

STEPS = 12

if torch.__version__ < (2, 3):
    pytest.skip("torch.amp.GradScaler('cpu') needs torch >= 2.3", allow_module_level=True)


def make_problem(dtype=torch.float32, safety_weight=1.0):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.to(dtype)
    x_util = torch.randn(32, 6, generator=g).to(dtype)
    x_safe = torch.randn(24, 6, generator=g).to(dtype)
    util = (x_util, x_util.sum(1, keepdim=True))
    safe = (x_safe, -x_safe.sum(1, keepdim=True) * safety_weight)
    return model, util, safe


def mse(model, batch):
    x, y = batch
    return ((model(x).float() - y.float()) ** 2).mean()


def autocast(dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def tau_for(model, safe, amp_dtype, factor=2.0):
    with torch.no_grad(), autocast(amp_dtype):
        return float(mse(model, safe)) * factor


PRECISIONS = {
    # name: (parameter dtype, autocast dtype, atol on parameters)
    "fp32_params_bf16_autocast": (torch.float32, torch.bfloat16, 1e-5),
    "bf16_params": (torch.bfloat16, None, 2e-2),
    "fp32_params_fp16_autocast": (torch.float32, torch.float16, 1e-5),
}


@pytest.mark.parametrize("name", sorted(PRECISIONS))
def test_low_precision_matches_float64_reference(name):
    dtype, amp_dtype, atol = PRECISIONS[name]
    model, util, safe = make_problem(dtype)
    ref_model = copy.deepcopy(model)
    tau = tau_for(model, safe, amp_dtype)

    def safety(m):
        with autocast(amp_dtype):
            return mse(m, safe)

    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        lambda: safety(model),
        tau=tau,
        trust_region=None,
        eps=0.0,
    )
    ref_params = list(ref_model.parameters())
    ref_inner = torch.optim.SGD(ref_params, lr=0.05)
    projected = 0
    for _ in range(STEPS):
        for m, o in ((model, opt), (ref_model, ref_inner)):
            o.zero_grad()
            with autocast(amp_dtype):
                loss = mse(m, util)
            loss.backward()
        opt.step()
        did, alpha = reference_paper_step(
            ref_params, ref_inner, lambda: safety(ref_model), tau=tau, trust_region=None, rho=1.0
        )
        projected += did
        assert bool(opt.last_stats["projected"]) == did
        assert float(opt.last_stats["alpha"]) == pytest.approx(
            alpha, rel=1e-4 if dtype == torch.float32 else 2e-2
        )
        # Norms never accumulate in half precision.
        assert not did or opt.last_stats["safety_grad_norm"].dtype == torch.float32
        for p, q in zip(model.parameters(), ref_params):
            assert p.dtype == dtype
            torch.testing.assert_close(p.float(), q.float(), rtol=0, atol=atol)
    assert 0 < projected < STEPS


FUSED_ON_CPU = pytest.mark.skipif(
    torch.__version__ < (2, 4), reason="fused AdamW on CPU needs torch >= 2.4"
)


@pytest.mark.parametrize("flavour", ["foreach", pytest.param("fused", marks=FUSED_ON_CPU)])
def test_foreach_and_fused_inner_optimizers_match_reference(flavour):
    model, util, safe = make_problem(torch.float64)
    ref_model = copy.deepcopy(model)
    tau = tau_for(model, safe, None)
    opt = SPAGOptimizer(
        torch.optim.AdamW(model.parameters(), lr=0.05, **{flavour: True}),
        lambda: mse(model, safe),
        tau=tau,
        trust_region="relative",
        rho=0.5,
        eps=0.0,
    )
    ref_params = list(ref_model.parameters())
    ref_inner = torch.optim.AdamW(ref_params, lr=0.05, foreach=False)
    projected = 0
    for _ in range(STEPS):
        for m, o in ((model, opt), (ref_model, ref_inner)):
            o.zero_grad()
            mse(m, util).backward()
        opt.step()
        did, _ = reference_paper_step(
            ref_params,
            ref_inner,
            lambda: mse(ref_model, safe),
            tau=tau,
            trust_region="relative",
            rho=0.5,
        )
        projected += did
        for p, q in zip(model.parameters(), ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9)
    assert 0 < projected < STEPS


# docs/integrations.md snippet (fp16 + GradScaler): this step, with SPAGOptimizer(..., grad_scaler=scaler).
def scaled_step(model, opt, scaler, util):
    opt.zero_grad()
    with autocast(torch.float16):
        loss = mse(model, util)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def test_grad_scaler_scales_and_unscales_the_safety_backward():
    """fp16 + GradScaler: same trajectory as the float64 reference on the unscaled losses."""
    model, util, safe = make_problem()
    ref_model = copy.deepcopy(model)
    tau = tau_for(model, safe, torch.float16)

    def safety(m):
        with autocast(torch.float16):
            return mse(m, safe)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        lambda: safety(model),
        tau=tau,
        trust_region=None,
        eps=0.0,
        grad_scaler=scaler,
    )
    ref_params = list(ref_model.parameters())
    ref_inner = torch.optim.SGD(ref_params, lr=0.05)
    projected = 0
    for _ in range(STEPS):
        scaled_step(model, opt, scaler, util)
        ref_inner.zero_grad()
        with autocast(torch.float16):
            mse(ref_model, util).backward()
        did, alpha = reference_paper_step(
            ref_params, ref_inner, lambda: safety(ref_model), tau=tau, trust_region=None, rho=1.0
        )
        projected += did
        assert float(opt.last_stats["alpha"]) == pytest.approx(alpha, rel=1e-3)
        for p, q in zip(model.parameters(), ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
    assert 0 < projected < STEPS
    assert scaler.get_scale() >= 2.0**12, "no overflow happened, the scale never backed off"


def test_overflowing_utility_gradient_skips_the_whole_step_like_grad_scaler():
    model, util, safe = make_problem()
    calls = []

    def safety():
        calls.append(1)
        return mse(model, safe)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        safety,
        tau=0.0,
        trust_region=None,
        grad_scaler=scaler,
    )
    before = flat(model.parameters())
    opt.zero_grad()
    with autocast(torch.float16):
        loss = mse(model, util)
    scaler.scale(loss).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert calls == [], "the safety closure must not run on a skipped step"
    assert torch.equal(flat(model.parameters()), before)
    assert scaler.get_scale() == 2.0**11
    assert opt.num_steps == 0


def test_overflowing_safety_gradient_skips_the_projection_and_backs_off_the_scale():
    """A safety backward that overflows at the current scale: theta+ is kept (never NaN), the step
    is counted as non-finite, and the scaler backs off as it would for the utility gradient."""
    model, util, safe = make_problem(safety_weight=1.0)
    twin = copy.deepcopy(model)

    def safety():
        with autocast(torch.float16):
            return mse(model, safe) * 3e4  # x scale 2^12 overflows fp16 in the backward

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    opt = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        safety,
        tau=0.0,
        trust_region=None,
        grad_scaler=scaler,
    )
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    scaled_step(model, opt, scaler, util)
    twin_opt.zero_grad()
    with autocast(torch.float16):
        mse(twin, util).backward()
    twin_opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert opt.num_nonfinite == 1  # counted on device; reading the counter never warns
    assert not bool(opt.last_stats["projected"])
    torch.testing.assert_close(flat(model.parameters()), flat(twin.parameters()), rtol=0, atol=1e-6)
    assert torch.isfinite(flat(model.parameters())).all()
    assert scaler.get_scale() == 2.0**11
    with pytest.warns(RuntimeWarning, match="non-finite safety gradient"):
        scaled_step(model, opt, scaler, util)  # reported at the next step's read of the loss


def test_grad_scaler_must_be_a_grad_scaler():
    model, _, safe = make_problem()
    with pytest.raises(TypeError, match="GradScaler"):
        SPAGOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda: mse(model, safe),
            grad_scaler=object(),
        )
