"""GuardSpace on bad data, bad files and bad arguments: one clear error before anything changes,
all-or-nothing model surgery, atomic saves, and a base-model fingerprint checked on load."""

from __future__ import annotations

import itertools
import os
import re
import warnings

import pytest
import torch
from torch import nn

from spag_optim import SafetyBatches
from spag_optim.guardspace import (
    GuardSpaceLinear,
    adapter_parameters,
    apply_guardspace,
    load_guardspace,
    merge_guardspace,
    null_space,
    save_guardspace,
)
from spag_optim.guardspace import io as io_module
from spag_optim.warnings import UnverifiedBaseWarning

from helpers.guardspace_net import D_X, D_Y, Net, make_batches
from helpers.hf_tiny import SAFE_TEXTS, tokenized, tokenizer
from helpers.tiny_lm import tiny_causal_lm


def net(seed=0):
    torch.manual_seed(seed)
    return Net().double()


def data(seed=0, masked=True):
    """(safety, null) batches for :class:`Net`: full-rank safety data, null data leaving a null space."""
    gen = torch.Generator().manual_seed(seed)
    return make_batches(gen, 3, D_X, D_Y, masked=masked), make_batches(gen, 2, 5, 12, masked=masked)


def snapshot(model):
    """Everything a failed call must leave as it was: module types, values, requires_grad."""
    return (
        {n: type(m) for n, m in model.named_modules()},
        {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
    )


def assert_unchanged(model, before):
    types, params = snapshot(model)
    assert types == before[0]
    assert params.keys() == before[1].keys()
    for name, (value, grad) in params.items():
        assert torch.equal(value, before[1][name][0]) and grad == before[1][name][1], name


def guarded_file(tmp_path, seed=0):
    """A trained-looking GuardSpace model of :class:`Net` saved to ``tmp_path / 'gs.pt'``."""
    model = net(seed)
    safety, null = data()
    apply_guardspace(model, safety, null, rank=2, progress=False)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.01)
    path = tmp_path / "gs.pt"
    save_guardspace(model, path)
    return model, path


# --- null batches with no unmasked token -------------------------------------------------------


@pytest.mark.parametrize("null_energy", [None, 0.99])
def test_null_batches_without_an_unmasked_token_are_refused_before_any_change(null_energy):
    model = net()
    safety, null = data()
    for b in null:  # all zero; an inverted mask (1 on padding) of unpadded batches is the same
        b["attention_mask"] = torch.zeros_like(b["attention_mask"])
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # not the empty-null-space warning: the masks are the problem
        with pytest.raises(ValueError, match=r"null-space.*no unmasked token.*attention_mask"):
            apply_guardspace(model, safety, null, rank=2, null_energy=null_energy, progress=False)
    assert_unchanged(model, before)


def test_safety_batches_without_an_unmasked_token_are_refused_too():
    model = net()
    safety, null = data()
    for b in safety:
        b["attention_mask"] = torch.zeros_like(b["attention_mask"])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"safety.*no unmasked token"):
        apply_guardspace(model, safety, null, rank=2, progress=False)
    assert_unchanged(model, before)


def test_null_space_refuses_a_non_finite_covariance():
    cov = torch.eye(4, dtype=torch.float64)
    cov[0, 0] = float("nan")
    for energy in (None, 0.99):
        with pytest.raises(ValueError, match="non-finite"):
            null_space(cov, energy=energy)


# --- endless iterables ---------------------------------------------------------------------------


def endless(batches):
    """The rows of ``batches`` as an endless :class:`SafetyBatches` of two rows per batch."""
    examples = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["x"]))]
    return SafetyBatches(examples, batch_size=2, shuffle=False)


@pytest.mark.parametrize("which", ["safety", "null"])
def test_an_endless_iterable_is_refused_with_advice(which):
    model = net()
    safety, null = data()
    args = {"safety": (endless(safety), null), "null": (safety, itertools.cycle(null))}[which]
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{which}_batches.*endless.*max_batches"):
        apply_guardspace(model, *args, rank=2, progress=False)
    assert_unchanged(model, before)


def test_max_batches_bounds_each_pass_and_leaves_safety_batches_where_they_were():
    """The position used to move by the batches read (a training run then drew other batches)."""
    safety, null = data()
    endless_safety = endless(safety)  # 6 rows: 3 batches of 2 are one pass
    read = []
    collate = endless_safety.collate_fn
    endless_safety.collate_fn = lambda rows: read.append(len(rows)) or collate(rows)
    next(endless_safety)
    position = endless_safety.state_dict()
    report = apply_guardspace(
        net(), endless_safety, itertools.cycle(null), rank=2, max_batches=3, progress=False
    )
    assert read == [2, 2, 2, 2]  # the draw above, then exactly 3 batches
    assert endless_safety.state_dict() == position
    # the null pass read null[0], null[1], null[0]: the same span as null itself
    assert report == apply_guardspace(net(), safety, null, rank=2, progress=False)
    with pytest.raises(ValueError, match="max_batches must be a positive int"):
        apply_guardspace(net(), safety, null, rank=2, max_batches=0, progress=False)


# --- atomic save ---------------------------------------------------------------------------------


def test_a_save_failing_part_way_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model, path = guarded_file(tmp_path)
    previous = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        handle.write(b"PK\x03\x04 half a zip")
        handle.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_guardspace(model, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["gs.pt"]


# --- all or nothing ------------------------------------------------------------------------------


def test_apply_failing_part_way_changes_nothing_and_a_retry_works():
    model = net()
    safety, null = data()
    dead = [
        dict(b, y=torch.zeros_like(b["y"])) for b in safety
    ]  # c (the last layer) sees only zeros
    before = snapshot(model)
    with pytest.raises(ValueError, match="saw no"):
        apply_guardspace(model, dead, null, rank=2, progress=False)
    assert_unchanged(model, before)
    apply_guardspace(
        model, safety, null, rank=2, progress=False
    )  # not "already a GuardSpace layer"
    assert all(isinstance(m, GuardSpaceLinear) for m in model.children())


def test_load_failing_part_way_changes_nothing(tmp_path, monkeypatch):
    _, path = guarded_file(tmp_path)
    model = net()
    before = snapshot(model)
    real = io_module.residual_weight
    calls = []

    def out_of_memory(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return real(*args)

    monkeypatch.setattr(io_module, "residual_weight", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        load_guardspace(model, path)
    assert_unchanged(model, before)
    monkeypatch.setattr(io_module, "residual_weight", real)
    load_guardspace(model, path)
    assert all(isinstance(m, GuardSpaceLinear) for m in model.children())


def test_merge_failing_part_way_changes_nothing(tmp_path, monkeypatch):
    model, _ = guarded_file(tmp_path)
    before = snapshot(model)
    real = GuardSpaceLinear.merged_weight
    calls = []

    def out_of_memory(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return real(self)

    monkeypatch.setattr(GuardSpaceLinear, "merged_weight", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        merge_guardspace(model)
    assert_unchanged(model, before)


# --- base fingerprint and damaged files ----------------------------------------------------------


def test_loading_onto_a_different_base_is_refused_or_warned(tmp_path):
    _, path = guarded_file(tmp_path, seed=0)
    other = net(seed=1)  # same shapes, other weights
    before = snapshot(other)
    with pytest.raises(
        ValueError, match=rf"{re.escape(path.name)}.*different base.*3 layer.*check_base=False"
    ):
        load_guardspace(other, path)
    assert_unchanged(other, before)
    with pytest.warns(UnverifiedBaseWarning, match="different base"):
        load_guardspace(other, path, check_base=False)
    assert all(isinstance(m, GuardSpaceLinear) for m in other.children())


def test_the_fingerprint_survives_a_save_load_round_trip(tmp_path):
    _, path = guarded_file(tmp_path)
    loaded = load_guardspace(net(), path)
    save_guardspace(loaded, tmp_path / "again.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_guardspace(net(), tmp_path / "again.pt")


def test_a_file_without_a_fingerprint_loads_with_a_warning(tmp_path):
    model, path = guarded_file(tmp_path)
    state = torch.load(path, weights_only=True)
    state["format"] = "spard-guardspace-1"
    for entry in state["layers"].values():
        del entry["base_fingerprint"]
    torch.save(state, path)
    with pytest.warns(UnverifiedBaseWarning, match="no base fingerprint for 3 layer.*cannot check"):
        load_guardspace(net(), path)


def test_a_truncated_file_is_one_clear_error_naming_it(tmp_path):
    _, path = guarded_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = net()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*truncated or corrupted"):
        load_guardspace(model, path)
    assert_unchanged(model, before)


def _tamper(state, how):
    layer = state["layers"]["b"]
    projector = state["projectors"][layer["projector"]]
    if how == "missing key":
        del layer["init_B"]
    elif how == "wrong shape":
        layer["A"] = layer["A"][:, :1]
    elif how == "rank mismatch":
        layer["init_B"] = torch.cat([layer["init_B"], layer["init_B"]])
    elif how == "non-finite":
        layer["B"][0, 0] = float("nan")
    elif how == "unknown projector":
        layer["projector"] = "nowhere"
    elif how == "projector shape":
        projector["basis"] = projector["basis"][:, :-1]
    elif how == "not a tensor":
        layer["A"] = [[1.0]]
    elif how == "no layers":
        state["layers"] = {}


TAMPERINGS = [
    "missing key",
    "wrong shape",
    "rank mismatch",
    "non-finite",
    "unknown projector",
    "projector shape",
    "not a tensor",
    "no layers",
]


@pytest.mark.parametrize("how", TAMPERINGS)
def test_a_tampered_file_is_one_clear_error_before_any_change(tmp_path, how):
    _, path = guarded_file(tmp_path)
    state = torch.load(path, weights_only=True)
    _tamper(state, how)
    torch.save(state, path)
    model = net()
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: .*(save it again|apply_guardspace)"
    ):
        load_guardspace(model, path)
    assert_unchanged(model, before)


# --- smaller argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize("rank", [2.5, "2", True, None])
def test_a_rank_that_is_not_an_int_is_refused(rank):
    model = net()
    safety, null = data()
    before = snapshot(model)
    with pytest.raises(TypeError, match="rank must be an int"):
        apply_guardspace(model, safety, null, rank=rank, progress=False)
    assert_unchanged(model, before)


def test_a_string_target_modules_is_refused_with_advice():
    model = net()
    safety, null = data()
    with pytest.raises(TypeError, match=r"target_modules must be a list.*\['ca'\]"):
        apply_guardspace(model, safety, null, rank=2, target_modules="ca", progress=False)
    assert all(type(m) is nn.Linear for m in model.children())


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def llama(tok):
    return tiny_causal_lm(tok, 0, hidden=32, intermediate=48, layers=1, heads=4, kv_heads=2)


def llama_batches(tok, texts):
    out = []
    for row in tokenized(tok, texts):
        ids = torch.tensor([row["input_ids"]])
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


@pytest.mark.parametrize("cut", ["short", "extra row"])
def test_an_attention_mask_not_shaped_like_the_tokens_is_refused(tok, cut):
    model = llama(tok)
    safety = llama_batches(tok, SAFE_TEXTS)
    null = llama_batches(tok, SAFE_TEXTS[:2])
    mask = null[1]["attention_mask"]
    null[1]["attention_mask"] = mask[:, :-1] if cut == "short" else torch.cat([mask, mask])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"null-space.*batch 1.*attention_mask.*shape.*input_ids"):
        apply_guardspace(model, safety, null, rank=2, progress=False)
    assert_unchanged(model, before)


def test_a_peft_model_is_refused_with_advice(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(tok), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    batches = llama_batches(tok, SAFE_TEXTS[:2])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"peft.*LoRA.*merge_and_unload"):
        apply_guardspace(model, batches, batches, rank=2, progress=False)
    assert_unchanged(model, before)


def test_merge_leaves_no_parameter_trainable_as_documented(tmp_path):
    model, _ = guarded_file(tmp_path)
    merge_guardspace(model)
    assert all(type(m) is nn.Linear for m in model.children())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
