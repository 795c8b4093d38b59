"""GuardSpace adapter files against the model they are loaded onto: a model of another size is
named as such (the file is fine), and the base fingerprint covers every weight, with files of the
previous format still checked the way they were written."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from spag_optim import guardspace
from spag_optim.guardspace.fingerprint import SAMPLE_SIZE, base_fingerprint

from helpers.guardspace_net import D_X, Net, make_batches


def net(seed=0):
    torch.manual_seed(seed)
    return Net().double()


def saved_file(tmp_path):
    model = net()
    gen = torch.Generator().manual_seed(0)
    guardspace.apply_guardspace(
        model, make_batches(gen, 3, D_X, 16), make_batches(gen, 2, 5, 12), rank=2, progress=False
    )
    with torch.no_grad():
        for p in guardspace.adapter_parameters(model):
            p.add_(0.01)
    path = tmp_path / "gs.pt"
    guardspace.save_guardspace(model, path)
    return path


def parameters(model):
    return {
        n: (type(m), p.detach().clone())
        for n, m in model.named_modules()
        for p in m.parameters(recurse=False)
    }


def test_a_model_of_another_size_is_named_not_the_file(tmp_path):
    """It used to say the file "is damaged or was edited: save it again"."""
    path = saved_file(tmp_path)
    bigger = net()
    bigger.a = nn.Linear(D_X, 11).double()  # the file adapts a 10 x 12 Linear `a`
    before = parameters(bigger)
    with pytest.raises(ValueError) as error:
        guardspace.load_guardspace(bigger, path)
    message = str(error.value)
    assert re.search(r"layer a .*10 x 12.*this model's is 11 x 12", message), message
    assert "damaged" not in message and "another model" in message
    after = parameters(bigger)
    assert after.keys() == before.keys()
    assert all(
        after[k][0] is before[k][0] and torch.equal(after[k][1], before[k][1]) for k in after
    )


def test_the_fingerprint_sees_a_change_to_any_weight():
    """A strided sample of every 4th entry missed a change to the other 75% of a 128 x 128 Linear."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 128)
    before = base_fingerprint(linear)
    with torch.no_grad():
        flat = linear.weight.view(-1)
        keep = torch.arange(flat.numel()) % 4 == 0
        flat[~keep] += 1.0
    assert base_fingerprint(linear) != before
    with torch.no_grad():
        linear.weight.view(-1)[1] -= 1.0  # one weight back: still not the base
    assert base_fingerprint(linear) != before


def as_previous_format(path):
    """Rewrite ``path`` as format 2 wrote it: a strided-sample fingerprint per layer."""
    state = torch.load(path, weights_only=True)
    state["format"] = "spard-guardspace-2"
    modules = dict(net().named_modules())
    for name, entry in state["layers"].items():
        entry["base_fingerprint"] = base_fingerprint(modules[name], sample=SAMPLE_SIZE)
    torch.save(state, path)


def test_a_file_of_the_previous_format_is_checked_as_it_was_written(tmp_path):
    path = saved_file(tmp_path)
    as_previous_format(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guardspace.load_guardspace(net(), path)
    with pytest.raises(ValueError, match="different base"):
        guardspace.load_guardspace(net(seed=1), path)


def test_the_fingerprint_holds_across_load_dtypes_and_tells_bases_apart():
    torch.manual_seed(0)
    linear = nn.Linear(300, 200)  # 60000 weights, every one in the fingerprint
    with torch.no_grad():  # a bfloat16 checkpoint within float16's normal range, in each dtype
        for p in (linear.weight, linear.bias):
            p.copy_(torch.where(p.abs() < 2**-14, torch.full_like(p, 2**-14), p).to(torch.bfloat16))
    prints = {
        str(dtype): base_fingerprint(linear.to(dtype))
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    }
    assert len(set(prints.values())) == 1, prints
    other = nn.Linear(300, 200)
    assert base_fingerprint(other) != prints["torch.float32"]
    with torch.no_grad():
        other.weight.copy_(linear.weight.float())
        other.bias.copy_(linear.bias.float())
        assert base_fingerprint(other) == prints["torch.float32"]
        other.bias[0] += 1.0  # the bias is part of the base too
    assert base_fingerprint(other) != prints["torch.float32"]
