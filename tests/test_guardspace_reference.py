"""GuardSpace steps 1-3 against the literal float64 reference
(tests/helpers/guardspace_reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spag_optim.guardspace import GuardSpaceLinear, apply_guardspace, null_space, preconditioned_svd

import helpers.guardspace_reference as ref
from helpers.guardspace_net import D_X, D_Y, Net, make_batches


def rows(batches, key):
    """The unmasked token rows of ``key`` in every batch, as the reference's inputs."""
    out = []
    for b in batches:
        x = b[key].reshape(-1, b[key].shape[-1])
        if "attention_mask" in b:
            x = x[b["attention_mask"].reshape(-1).bool()]
        out.append(x)
    return out


def test_apply_matches_the_literal_reference_of_steps_1_to_3():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = Net().double()
    originals = {
        n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
        for n, m in net.named_children()
    }
    safety = make_batches(gen, 3, D_X, D_Y, masked=True)  # full rank; padding rows must not count
    null = make_batches(
        gen, 3, 5, 12, masked=True
    )  # x: null dim 7 (complement form), y: 4 (range form)
    report = apply_guardspace(
        net, safety, null, rank=3, null_rel_tol=1e-6, progress=False
    )  # the paper's

    assert report["b"].projector == "a" and net.a.projector is net.b.projector
    assert report["c"].projector == "c"
    assert (report["a"].null_dim, report["c"].null_dim) == (7, 4)
    assert net.a.projector.basis.shape == (D_X, 5) and net.c.projector.basis.shape == (D_Y, 4)
    assert report["a"].projector_numel == D_X * 5
    for name, key in (("a", "x"), ("b", "x"), ("c", "y")):
        layer = getattr(net, name)
        assert isinstance(layer, GuardSpaceLinear)
        w, bias = originals[name]
        c = ref.covariance(rows(safety, key))
        a, b, damp = ref.adapter(w, c, 3)
        p = ref.projector(ref.covariance(rows(null, key)))
        assert report[name].damping == damp
        torch.testing.assert_close(layer.projector.space().dense(), p, rtol=0, atol=1e-9)
        got_a, got_b = ref.fix_signs(layer.adapter_A.detach(), layer.adapter_B.detach())
        want_a, want_b = ref.fix_signs(a, b)
        torch.testing.assert_close(got_a, want_a, rtol=0, atol=1e-9)
        torch.testing.assert_close(got_b, want_b, rtol=0, atol=1e-9)
        torch.testing.assert_close(
            layer.weight.detach(), ref.residual(w, a, b, p), rtol=0, atol=1e-9
        )
        if bias is not None:
            assert torch.equal(layer.bias, bias)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.adapter_{f}" for n in "abc" for f in "AB"}


def test_damping_doubles_until_the_inverse_is_accurate():
    gen = torch.Generator().manual_seed(1)
    d = 24
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    c = q @ torch.diag(torch.logspace(-14, 6, d, dtype=torch.float64)) @ q.T
    w = torch.randn(8, d, generator=gen, dtype=torch.float64)
    errors = [ref.inverse_error(c, 0.01 * 2**k) for k in range(4)]
    assert errors[3] < errors[0]
    tol = (errors[0] + errors[3]) / 2  # the first damping fails, a later one passes
    a, b, damp = ref.adapter(w, c, 2, tol=tol)
    got_a, got_b, got_damp = preconditioned_svd(w, c, 2, inverse_tol=tol)
    assert damp > 0.01 and got_damp == damp
    for got, want in zip(ref.fix_signs(got_a, got_b), ref.fix_signs(a, b)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_energy_rule_matches_brute_force(energy):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 10, generator=gen, dtype=torch.float64) * torch.logspace(
        0, -2, 10, dtype=torch.float64
    )
    c = ref.covariance([x])
    space = null_space(c, energy=energy)
    assert space.dim == ref.energy_null_dim(c, energy)
    p = space.dense()
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)
    assert abs(float(torch.trace(p)) - space.dim) < 1e-9


def test_bad_rank_and_dead_layer_are_rejected():
    w = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="rank must be in"):
        preconditioned_svd(w, torch.eye(6, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="saw no"):
        preconditioned_svd(w, torch.zeros(6, 6, dtype=torch.float64), 2)


def test_non_finite_inputs_are_rejected_before_any_layer_changes():
    gen = torch.Generator().manual_seed(3)
    net = Net().double()
    batches = make_batches(gen, 2, D_X, D_Y)
    batches[1]["x"][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite inputs reached"):
        apply_guardspace(net, batches, batches, rank=2, progress=False)
    assert all(type(m) is nn.Linear for m in net.children())
