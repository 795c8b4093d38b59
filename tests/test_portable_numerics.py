"""Portable numerics (examples/_demo/numerics.py, portable_ops.py): the exact products against a
literal integer reference, their independence of the summation order and the BLAS, the MKL-free
elementary functions against float64, the kernels' scope, and the same bits in child processes
whose MKL takes other code paths (what another CPU vendor changes)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _demo.numerics import portable_env, portable_numerics
from _demo.portable_ops import (
    PortabilityError,
    PortableKernels,
    _operand_bits,
    exact_matmul,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _literal_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact product's definition, written out with Python integers: each row of ``a`` and
    column of ``b`` scaled by a power of two to ``bits``-bit integers (round half to even), the
    integer sums exact, one rounding to float32."""
    m, k = a.shape
    n = b.shape[1]
    bits = _operand_bits(k)

    def integers(values):
        exponent = math.frexp(max(abs(float(v)) for v in values))[1]
        shift = bits - exponent
        return [round(math.ldexp(float(v), shift)) for v in values], shift

    rows = [integers(a[i]) for i in range(m)]
    cols = [integers(b[:, j]) for j in range(n)]
    out = np.empty((m, n), dtype=np.float32)
    for i, (qa, sa) in enumerate(rows):
        for j, (qb, sb) in enumerate(cols):
            total = sum(x * y for x, y in zip(qa, qb))  # exact, Python integers
            out[i, j] = np.float32(math.ldexp(float(total), -(sa + sb)))
    return out


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 5),
    k=st.integers(1, 40),
    n=st.integers(1, 5),
    scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]),
    seed=st.integers(0, 2**31 - 1),
    zero_row=st.booleans(),
)
def test_exact_matmul_equals_the_literal_integer_reference(m, k, n, scale, seed, zero_row):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * scale).astype(np.float32)
    b = (rng.standard_normal((k, n)) * rng.choice([1e-2, 1.0, 1e2], size=(1, n))).astype(np.float32)
    if zero_row:
        a[0] = 0.0
    got = exact_matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _literal_product(a, b))


def test_exact_matmul_does_not_depend_on_the_summation_order_and_meets_its_bound():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 300, generator=g)
    b = torch.randn(300, 9, generator=g)
    a[:, ::7] *= 1e-4  # entries far below the row's peak lose bits: the bound must still hold
    order = torch.randperm(300, generator=g)
    product = exact_matmul(a, b)
    # Same value whatever order the k terms come in: bit for bit, by construction.
    assert torch.equal(product, exact_matmul(a[:, order], b[order]))
    reference = a.double() @ b.double()
    bits = _operand_bits(300)
    bound = (
        300 * 2.0**-bits * a.abs().amax(1, keepdim=True).double() * b.abs().amax(0).double()
        + 2.0**-24 * reference.abs()
    )
    assert ((product.double() - reference).abs() <= bound).all()


def test_operand_bits_keep_every_partial_sum_below_two_to_the_53():
    for k in (1, 2, 3, 64, 65, 768, 4096, 8192, 10**6):
        bits = _operand_bits(k)
        assert k * 2 ** (2 * bits) <= 2**53, k
    assert _operand_bits(64) == 23 and _operand_bits(1) == 24


def test_batched_and_float64_products():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, 6, generator=g), torch.randn(3, 6, 5, generator=g)
    batched = exact_matmul(a, b)
    assert torch.equal(batched[1], exact_matmul(a[1], b[1]))
    a64, b64 = a.double(), b.double()
    torch.testing.assert_close(exact_matmul(a64, b64), a64 @ b64, rtol=1e-14, atol=1e-14)


ELEMENTARY = {
    "sqrt": (torch.sqrt, lambda g: torch.rand(4096, generator=g) * 100),
    "exp": (torch.exp, lambda g: torch.randn(4096, generator=g) * 20),
    "log": (torch.log, lambda g: torch.rand(4096, generator=g) * 1e3 + 1e-30),
    "log2": (torch.log2, lambda g: torch.rand(4096, generator=g) * 1e3 + 1e-30),
    "log10": (torch.log10, lambda g: torch.rand(4096, generator=g) * 1e3 + 1e-30),
    "tanh": (torch.tanh, lambda g: torch.randn(4096, generator=g) * 5),
}


@pytest.mark.parametrize("name", sorted(ELEMENTARY))
def test_elementary_functions_are_within_one_float32_unit_of_float64(name):
    fn, draw = ELEMENTARY[name]
    x = draw(torch.Generator().manual_seed(2))
    with PortableKernels() as kernels:
        got = fn(x)
    assert kernels.counts.get(name) == 1  # it ran the replacement, not MKL
    reference = fn(x.double())
    ulp = torch.finfo(torch.float32).eps * reference.abs().clamp_min(
        torch.finfo(torch.float32).tiny
    )
    assert ((got.double() - reference).abs() <= ulp).all()


@pytest.mark.parametrize(
    ("fn", "inputs", "expected"),
    [
        (
            torch.sqrt,
            [0.0, -0.0, math.inf, -1.0, math.nan],
            [0.0, -0.0, math.inf, math.nan, math.nan],
        ),
        (
            torch.exp,
            [-math.inf, math.inf, 89.0, -200.0, math.nan],
            [0.0, math.inf, math.inf, 0.0, math.nan],
        ),
        (
            torch.log,
            [0.0, -1.0, math.inf, 1.0, math.nan],
            [-math.inf, math.nan, math.inf, 0.0, math.nan],
        ),
        (torch.tanh, [math.inf, -math.inf, -0.0, 0.0, math.nan], [1.0, -1.0, -0.0, 0.0, math.nan]),
    ],
)
def test_elementary_functions_keep_the_special_values(fn, inputs, expected):
    with PortableKernels():
        got = fn(torch.tensor(inputs))
    want = torch.tensor(expected)
    assert torch.equal(got.isnan(), want.isnan())
    finite = ~want.isnan()
    assert torch.equal(got[finite], want[finite])
    assert torch.equal(torch.signbit(got[finite]), torch.signbit(want[finite]))


def test_kernels_cover_in_place_out_and_foreach_forms_and_are_restored_on_exit():
    g = torch.Generator().manual_seed(3)
    a, b, x = (
        torch.randn(5, 6, generator=g),
        torch.randn(6, 4, generator=g),
        torch.rand(8, generator=g),
    )
    native = a @ b
    out = torch.empty(0)
    with PortableKernels() as kernels:
        exact = a @ b
        torch.mm(a, b, out=out)
        y = x.clone().sqrt_()
        (z,) = torch._foreach_sqrt([x])
    assert torch.equal(out, exact) and torch.equal(exact, exact_matmul(a, b))
    assert torch.equal(y, z)
    # torch._foreach_sqrt on the CPU loops over aten::sqrt, so it reaches the replacement too.
    assert kernels.counts == {"mm": 1, "mm.out": 1, "sqrt_": 1, "sqrt": 1}
    assert torch.equal(a @ b, native)  # MKL's kernel is back
    assert kernels.counts["mm"] == 1


def test_kernels_reach_the_backward_pass():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    with PortableKernels() as kernels:
        (x @ w.T).square().sum().backward()
    assert kernels.counts["mm"] >= 2  # forward and the weight gradient
    assert w.grad is not None


def test_operators_without_a_portable_replacement_refuse():
    with PortableKernels(), pytest.raises(PortabilityError, match="native"):
        torch.linalg.svd(torch.randn(4, 4))


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="this process is portable"
)
def test_portable_numerics_refuses_a_process_with_vector_kernels():
    with pytest.raises(RuntimeError, match="ATEN_CPU_CAPABILITY=default"):
        with portable_numerics():
            pass


#: A few AdamW steps of a tiny Llama under portable numerics; prints a hash of the weights.
_TRAIN = """
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
from transformers import LlamaConfig, LlamaForCausalLM
from _demo.numerics import portable_numerics
torch.set_num_threads(2)
with portable_numerics():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        ids = torch.randint(0, 50, (4, 12), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
digest = hashlib.sha256()
for p in model.parameters():
    digest.update(p.detach().numpy().tobytes())
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_training_gives_the_same_bits_whatever_code_path_mkl_and_aten_would_take():
    """MKL's code paths (``MKL_CBWR``, ``MKL_ENABLE_INSTRUCTIONS``) are what another CPU vendor
    changes; the parent's ``ATEN_CPU_CAPABILITY`` is what a user may have set. None may change a
    bit, while the same variations do change native training (checked, so the test can fail)."""

    def train(**variables):
        env = portable_env() | variables
        done = subprocess.run(
            [sys.executable, "-c", _TRAIN, str(EXAMPLES)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    hashes = {
        train(),
        train(MKL_CBWR="AVX2"),
        train(MKL_CBWR="COMPATIBLE"),
        train(MKL_ENABLE_INSTRUCTIONS="SSE4_2"),
    }
    assert len(hashes) == 1, hashes
    native = _TRAIN.replace("with portable_numerics():", "if True:")
    runs = {
        subprocess.run(
            [sys.executable, "-c", native, str(EXAMPLES)],
            env=portable_env() | {"MKL_CBWR": cbwr},
            capture_output=True,
            text=True,
        ).stdout.strip()
        for cbwr in ("AVX2", "COMPATIBLE")
    }
    assert len(runs) == 2, "MKL's code path no longer changes native training: the test is void"


def test_numerics_entered_for_the_process_survive_garbage_collection():
    """A worker's initializer enters portable numerics for the process's life; a context manager
    entered and dropped would be closed by the collector and silently restore MKL's kernels."""
    code = (
        "import gc, sys, torch; sys.path.insert(0, sys.argv[1]);"
        "from _demo.numerics import use_portable_numerics;"
        "use_portable_numerics(); gc.collect();"
        "a = torch.randn(3, 3); a @ a; print(use_portable_numerics().counts.get('mm', 0))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLES)],
        env=portable_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"


#: Edge cases of the replaced kernels: each must give the native kernel's shape and dtype and,
#: within float32-grade tolerance, its values (inf and NaN where it has them).
EDGE_CASES = {
    "empty sum": lambda: torch.randn(3, 0) @ torch.randn(0, 4),
    "empty dot": lambda: torch.dot(torch.randn(0), torch.randn(0)),
    "no rows": lambda: torch.randn(0, 5) @ torch.randn(5, 4),
    "inf row": lambda: torch.tensor([[math.inf, 1.0], [1.0, 2.0]]) @ torch.eye(2),
    "NaN": lambda: torch.tensor([[math.nan, 1.0]]) @ torch.ones(2, 1),
    "overflow": lambda: torch.tensor([[3e38, 3e38]]) @ torch.tensor([[2.0], [2.0]]),
    "subnormal": lambda: torch.tensor([[1e-45, 1e-40]]) @ torch.tensor([[1e-45], [1.0]]),
    "integers": lambda: torch.arange(6).view(2, 3) @ torch.arange(6).view(3, 2),
    "float16": lambda: torch.randn(3, 4).half() @ torch.randn(4, 2).half(),
    "bfloat16": lambda: torch.randn(3, 4).bfloat16() @ torch.randn(4, 2).bfloat16(),
    "complex": lambda: torch.randn(3, 4, dtype=torch.complex64) @ torch.randn(4, 2).cfloat(),
    "addmm beta 0 ignores NaN": lambda: torch.addmm(
        torch.full((3, 2), math.nan), torch.randn(3, 4), torch.randn(4, 2), beta=0, alpha=2.0
    ),
    "transposed": lambda: torch.randn(4, 3).T @ torch.randn(4, 5),
    "einsum": lambda: torch.einsum("bij,bjk->bik", torch.randn(2, 3, 4), torch.randn(2, 4, 5)),
    "mv": lambda: torch.mv(torch.randn(3, 4), torch.randn(4)),
    "out to resize": lambda: torch.mm(torch.randn(2, 3), torch.randn(3, 4), out=torch.empty(0)),
    "sqrt of integers": lambda: torch.sqrt(torch.arange(5)),
    "exp in float16": lambda: torch.exp(torch.randn(4).half()),
    "logsumexp of infinities": lambda: torch.logsumexp(
        torch.tensor([[-math.inf, -math.inf], [math.inf, 1.0]]), 1
    ),
    "logsumexp over two dims": lambda: torch.logsumexp(torch.randn(2, 3, 4), (1, 2)),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_agree_with_the_native_kernels(name):
    torch.manual_seed(0)
    native = EDGE_CASES[name]()
    torch.manual_seed(0)
    with PortableKernels():
        portable = EDGE_CASES[name]()
    assert portable.shape == native.shape and portable.dtype == native.dtype
    wide = torch.complex128 if native.is_complex() else torch.float64
    torch.testing.assert_close(
        portable.to(wide), native.to(wide), rtol=1e-2, atol=1e-6, equal_nan=True
    )
