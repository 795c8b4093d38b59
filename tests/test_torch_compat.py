"""``spag_optim._torch_compat``: every private torch internal works on the installed torch, and the
installed torch lies inside the range the module (and setup.cfg) declare supported."""

from __future__ import annotations

import configparser
import pathlib
import re
from collections import OrderedDict

import pytest
import torch

from spag_optim import _torch_compat as compat

ROOT = pathlib.Path(__file__).resolve().parent.parent
# torch.amp.GradScaler("cpu") exists from torch 2.3; older versions scale on CUDA only.
needs_cpu_scaler = pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch < 2.3")
HOOK_KINDS = (
    "step_pre",
    "step_post",
    "state_dict_pre",
    "state_dict_post",
    "load_state_dict_pre",
    "load_state_dict_post",
)


def _installed() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def test_installed_torch_is_inside_the_supported_range():
    assert compat.TORCH_MIN <= _installed() < compat.TORCH_TESTED_BELOW, (
        f"torch {torch.__version__} is outside {compat.TORCH_MIN}..{compat.TORCH_TESTED_BELOW}: check "
        "every accessor of spag_optim/_torch_compat.py against it, then move the bound"
    )


def test_setup_cfg_declares_the_same_minimum():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    (torch_req,) = [r for r in reqs if re.match(r"torch\b", r)]
    minimum = re.search(r">=\s*(\d+)\.(\d+)", torch_req)
    assert minimum is not None, f"setup.cfg's {torch_req!r} declares no minimum"
    assert tuple(int(x) for x in minimum.groups()) == compat.TORCH_MIN
    upper = re.search(r"<\s*(\d+)\.(\d+)", torch_req)
    if upper is not None:
        assert tuple(int(x) for x in upper.groups()) <= compat.TORCH_TESTED_BELOW


def test_group_by_device_and_dtype_splits_by_dtype_and_keeps_the_tensors():
    a, b, c = torch.ones(2), torch.ones(3, dtype=torch.float64), torch.ones(4)
    ga, gb, gc = torch.zeros(2), torch.zeros(3, dtype=torch.float64), torch.zeros(4)
    grouped = compat.group_by_device_and_dtype([(a, b, c), [ga, gb, gc]])
    cpu = torch.device("cpu")
    assert set(grouped) == {(cpu, torch.float32), (cpu, torch.float64)}
    (p32, g32), _ = grouped[(cpu, torch.float32)]
    assert [t is u for t, u in zip(p32 + g32, [a, c, ga, gc])] == [True] * 4
    (p64, g64), _ = grouped[(cpu, torch.float64)]
    assert len(p64) == len(g64) == 1 and p64[0] is b and g64[0] is gb


def _scaled_step(grad_value: float, init_scale: float = 8.0):
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    scaler.scale((param * grad_value).sum()).backward()
    return param, opt, scaler


@needs_cpu_scaler
def test_grad_scaler_scale_is_the_device_tensor_get_scale_reads():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    with pytest.raises(RuntimeError, match="scaler.scale"):
        compat.grad_scaler_scale(scaler)
    _, _, scaler = _scaled_step(1.0)
    scale = compat.grad_scaler_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == scaler.get_scale() == 8.0


@needs_cpu_scaler
@pytest.mark.parametrize("grad_value, found", [(1.0, 0.0), (float("inf"), 1.0)])
def test_grad_scaler_found_inf_is_what_step_recorded(grad_value, found):
    _, opt, scaler = _scaled_step(grad_value)
    assert compat.grad_scaler_found_inf(scaler, opt) is None  # nothing recorded before step
    scaler.step(opt)
    target = compat.grad_scaler_found_inf(scaler, opt)
    assert target is not None and target.sum().item() == found


@needs_cpu_scaler
def test_adding_to_found_inf_makes_update_back_off():
    _, opt, scaler = _scaled_step(1.0)
    scaler.step(opt)
    compat.grad_scaler_found_inf(scaler, opt).add_(1.0)
    scaler.update()
    assert scaler.get_scale() == 8.0 * scaler.get_backoff_factor()


@pytest.mark.parametrize("values, found", [([2.0, 4.0], 0.0), ([2.0, float("inf")], 1.0)])
def test_amp_unscale_multiplies_and_flags_non_finite(values, found):
    grads = [torch.tensor(values[:1]), torch.tensor(values[1:])]
    flag = torch.zeros(1)
    compat.amp_unscale_(grads, flag, torch.tensor([0.5]))
    assert grads[0].item() == values[0] * 0.5
    assert flag.item() == found


class _Bare(torch.optim.Optimizer):
    """An optimizer that, like OptimizerWrapper, skips Optimizer.__init__."""

    def __init__(self) -> None:
        self.param_groups, self.state, self.defaults = [], {}, {}
        compat.init_optimizer_hooks(self)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1


class _Other(_Bare):
    def step(self, closure=None):
        self.steps += 10


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_optimizer_hooks_is_where_torch_registers_them(kind):
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    for opt in (sgd, _Bare()):
        hooks = compat.optimizer_hooks(opt, kind)
        assert isinstance(hooks, OrderedDict) and not hooks
        handle = getattr(opt, f"register_{kind}_hook")(lambda *args: None)
        assert list(hooks) == [handle.id]


def test_init_optimizer_hooks_makes_step_hooks_fire_and_patch_follows_a_class_change():
    opt, calls = _Bare(), []
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and opt.steps == 1
    opt.__class__ = _Other
    compat.patch_step_function(opt)
    opt.step()
    assert calls == ["pre", "post"] * 2 and opt.steps == 11


def test_unknown_hook_kind_is_refused():
    with pytest.raises(KeyError):
        compat.optimizer_hooks(_Bare(), "step")
