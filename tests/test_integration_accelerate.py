"""SPAG through Hugging Face Accelerate: ``accelerator.prepare(optimizer)``, gradient accumulation
with ``accelerator.accumulate``, bf16 autocast and the skip-step logic of loss scaling.

Accelerate gives CPU runs no GradScaler (fp16 needs a GPU there), so the skip-step test hands the
Accelerator a CPU ``torch.amp.GradScaler`` before ``prepare``: Accelerate's own
``AcceleratedOptimizer.step`` / ``optimizer_step_was_skipped`` code then runs unchanged.
"""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("accelerate")
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from spag_optim import SafetyBatches, SPAGOptimizer, make_safety_closure  # noqa: E402

from helpers.spag_reference import flat  # noqa: E402

if torch.__version__ < (2, 3):
    pytest.skip("torch.amp.GradScaler('cpu') needs torch >= 2.3", allow_module_level=True)

ACCUMULATION = 3
MICRO_BATCHES = 12


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class Regressor(torch.nn.Module):
    """Returns its loss like a Hugging Face model, so ``make_safety_closure`` works unchanged."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )

    def forward(self, x, y):
        out = self.net(x)
        self.last_dtype = out.dtype
        return {"loss": ((out.float() - y) ** 2).mean()}


def data(sign: float, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return [{"x": row, "y": sign * row.sum(0, keepdim=True)} for row in x]


def test_prepared_spag_projects_once_per_accumulated_step_in_bf16():
    safe = data(-1.0, 8, seed=1)
    calls = []

    def counting_loss(model, batch):
        calls.append(1)
        loss = model(**batch)["loss"]
        assert model.last_dtype == torch.bfloat16, "the safety forward must run under autocast"
        return loss

    # docs/integrations.md snippet (Accelerate): from here ...
    accelerator = Accelerator(
        mixed_precision="bf16", gradient_accumulation_steps=ACCUMULATION, cpu=True
    )
    model = accelerator.prepare(Regressor())
    safety = make_safety_closure(model, SafetyBatches(safe, batch_size=4), loss_fn=counting_loss)
    optimizer = SPAGOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        safety,
        tau=0.0,
        grad_scaler=accelerator.scaler,
    )
    optimizer, loader = accelerator.prepare(
        optimizer, DataLoader(data(1.0, 2 * MICRO_BATCHES, 0), batch_size=2)
    )
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch)["loss"])
            optimizer.step()  # a no-op on micro-batches that do not end an accumulation
            optimizer.zero_grad()
    # ... to here.
    spag = optimizer.optimizer
    assert len(calls) == spag.num_steps == MICRO_BATCHES // ACCUMULATION
    assert spag.num_projections == spag.num_steps


def test_manual_loop_equivalence_of_accelerated_spag():
    """Accelerate's accumulation + SPAG equals a hand-written loop (mean of micro-batch losses)."""
    safe = data(-1.0, 8, seed=1)
    train = data(1.0, 2 * MICRO_BATCHES, seed=0)

    accelerator = Accelerator(gradient_accumulation_steps=ACCUMULATION, cpu=True)
    model = accelerator.prepare(Regressor())
    reference_model = copy.deepcopy(model)
    optimizer = SPAGOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        make_safety_closure(model, SafetyBatches(safe, batch_size=4)),
        tau=0.0,
    )
    optimizer, loader = accelerator.prepare(optimizer, DataLoader(train, batch_size=2))
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch)["loss"])
            optimizer.step()
            optimizer.zero_grad()

    reference = SPAGOptimizer(
        torch.optim.AdamW(reference_model.parameters(), lr=1e-2),
        make_safety_closure(reference_model, SafetyBatches(safe, batch_size=4)),
        tau=0.0,
    )
    batches = list(DataLoader(train, batch_size=2))
    for start in range(0, len(batches), ACCUMULATION):
        reference.zero_grad()
        for batch in batches[start : start + ACCUMULATION]:
            (reference_model(**batch)["loss"] / ACCUMULATION).backward()
        reference.step()
    torch.testing.assert_close(
        flat(model.parameters()), flat(reference_model.parameters()), rtol=0, atol=1e-6
    )


def test_skip_step_logic_with_loss_scaling():
    safe = data(-1.0, 8, seed=1)
    calls = []

    def counting_loss(model, batch):
        calls.append(1)
        return model(**batch)["loss"]

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model = accelerator.prepare(Regressor())
    optimizer = SPAGOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-2),
        make_safety_closure(model, SafetyBatches(safe, batch_size=4), counting_loss),
        tau=0.0,
        grad_scaler=accelerator.scaler,
    )
    optimizer = accelerator.prepare(optimizer)
    batch = {"x": torch.randn(4, 6), "y": torch.randn(4, 1)}

    # An overflowing utility gradient: the scaler skips the step, projection included.
    before = flat(model.parameters())
    accelerator.backward(model(**batch)["loss"])
    model.net[0].weight.grad[0, 0] = float("inf")
    optimizer.step()
    optimizer.zero_grad()
    assert accelerator.optimizer_step_was_skipped
    assert calls == [] and torch.equal(flat(model.parameters()), before)
    assert accelerator.scaler.get_scale() == 2.0**9

    # A finite one: the step and the projection happen.
    accelerator.backward(model(**batch)["loss"])
    optimizer.step()
    optimizer.zero_grad()
    assert not accelerator.optimizer_step_was_skipped
    assert calls == [1] and optimizer.optimizer.num_projections == 1
    assert not torch.equal(flat(model.parameters()), before)
