"""DeepSpeed ZeRO is refused at construction, with the reason (DeepSpeed is not installed here).

The stand-ins below carry the module paths of DeepSpeed's real classes, which is what the check
looks at, so the test does not need DeepSpeed itself.
"""

from __future__ import annotations

import pytest
import torch

from spag_optim import SPAGOptimizer, make_safety_closure


def deepspeed_class(name: str, module: str, base: type = object) -> type:
    return type(name, (base,), {"__module__": module})


def tiny():
    model = torch.nn.Linear(3, 1)
    return model, lambda: model(torch.ones(2, 3)).pow(2).mean()


def test_zero_optimizer_is_refused_with_the_reason():
    ZeroOptimizer = deepspeed_class(
        "DeepSpeedZeroOptimizer", "deepspeed.runtime.zero.stage_1_and_2"
    )
    model, closure = tiny()
    zero = ZeroOptimizer()
    zero.param_groups = [{"params": list(model.parameters())}]
    with pytest.raises(
        NotImplementedError, match="does not support DeepSpeed ZeRO.*master weights"
    ):
        SPAGOptimizer(zero, closure)


def test_deepspeed_engine_in_the_closure_is_refused():
    Engine = deepspeed_class("DeepSpeedEngine", "deepspeed.runtime.engine", torch.nn.Module)
    engine = Engine()
    engine.lin = torch.nn.Linear(3, 1)
    closure = make_safety_closure(engine, iter([]))
    with pytest.raises(NotImplementedError, match="closure model"):
        SPAGOptimizer(torch.optim.SGD(engine.parameters(), lr=0.1), closure)


def test_zero3_partitioned_parameters_are_refused():
    model, closure = tiny()
    for p in model.parameters():
        p.ds_id = 0  # what ZeRO-3 sets on the parameters it partitions
    with pytest.raises(NotImplementedError, match="ZeRO-3"):
        SPAGOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), closure)


def test_deepspeed_kernels_alone_are_plain_optimizers():
    """deepspeed.ops optimizers (FusedAdam, DeepSpeedCPUAdam) are torch optimizers: allowed."""
    FusedAdam = deepspeed_class("FusedAdam", "deepspeed.ops.adam.fused_adam", torch.optim.SGD)
    model, closure = tiny()
    SPAGOptimizer(FusedAdam(model.parameters(), lr=0.1), closure)
