"""GuardSpace on a tiny Llama: the forward pass at initialisation, the null-space guarantee after
training (AdamW and SPAG), save/load/merge to a plain Hugging Face checkpoint, the empty null space."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from spag_optim import SPAGOptimizer
from spag_optim.guardspace import (
    GuardSpaceLinear,
    adapter_parameters,
    apply_guardspace,
    load_guardspace,
    merge_guardspace,
    save_guardspace,
)

from helpers.hf_tiny import SAFE_TEXTS, UTILITY_TEXTS, tokenized, tokenizer
from helpers.tiny_lm import tiny_causal_lm


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def llama(tok, seed=0):
    """The tiny Llama, wider (64), so a one-prompt null set leaves room for the adapters."""
    return tiny_causal_lm(tok, seed, hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2)


def single(tok, texts):
    """One unpadded batch per text (with labels for training)."""
    out = []
    for row in tokenized(tok, texts):
        ids = torch.tensor([row["input_ids"]])
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def logits(model, batches):
    with torch.no_grad():
        return [
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for b in batches
        ]


def rel(a_list, b_list):
    return max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(a_list, b_list))


def guarded(tok, rank=4):
    """A GuardSpace model whose null-space data are the first two safe prompts (fewer tokens than
    the width, so the paper's threshold finds a null space everywhere)."""
    model = llama(tok)
    null = single(tok, SAFE_TEXTS[:2])
    report = apply_guardspace(model, single(tok, SAFE_TEXTS), null, rank=rank)  # with progress bars
    return model, null, report


def adamw_steps(model, tok, steps=6, optimizer=None):
    optimizer = optimizer or torch.optim.AdamW(adapter_parameters(model), lr=1e-2)
    for batch in itertools.islice(itertools.cycle(single(tok, UTILITY_TEXTS[:4])), steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_forward_unchanged_at_initialisation_and_only_adapters_train(tok):
    base = llama(tok)
    prompts = single(tok, UTILITY_TEXTS[:3] + SAFE_TEXTS[2:])
    before = logits(base, prompts)
    model, _, report = guarded(tok)
    assert rel(before, logits(model, prompts)) <= 1e-5
    assert len(report) == 14 and all(r.null_dim > 0 for r in report.values())
    q = "model.layers.0.self_attn.q_proj"
    assert all(
        report[f"model.layers.0.{m}"].projector == q
        for m in ("self_attn.k_proj", "self_attn.v_proj")
    )
    assert report["model.layers.0.mlp.up_proj"].projector == "model.layers.0.mlp.gate_proj"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("adapter_A", "adapter_B")) for n in trainable)
    assert len(trainable) == 28 and "lm_head" not in " ".join(report)


def test_adamw_cannot_change_the_null_space_prompts_but_changes_others(tok):
    model, null, _ = guarded(tok)
    others = single(tok, UTILITY_TEXTS[4:7] + SAFE_TEXTS[2:])
    null_before, others_before = logits(model, null), logits(model, others)
    adamw_steps(model, tok)
    assert rel(null_before, logits(model, null)) <= 1e-4
    assert rel(others_before, logits(model, others)) > 1e-2


def test_spag_over_adamw_on_adapters_keeps_the_guarantee(tok):
    model, null, _ = guarded(tok)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    null_before = logits(model, null)
    safe = single(tok, SAFE_TEXTS[2:])
    batches = itertools.cycle(safe)
    spag = SPAGOptimizer(
        torch.optim.AdamW(adapter_parameters(model), lr=1e-2),
        lambda: model(**next(batches)).loss,
        tau=0.0,
    )
    adamw_steps(model, tok, optimizer=spag)
    assert spag.num_projections > 0
    assert rel(null_before, logits(model, null)) <= 1e-4
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_save_load_merge_give_the_same_logits(tok, tmp_path):
    from transformers import LlamaForCausalLM

    model, _, _ = guarded(tok)
    adamw_steps(model, tok)
    prompts = single(tok, UTILITY_TEXTS[:2] + SAFE_TEXTS)
    trained = logits(model, prompts)
    save_guardspace(model, tmp_path / "adapter.pt")

    loaded = load_guardspace(llama(tok), tmp_path / "adapter.pt")
    assert rel(trained, logits(loaded, prompts)) <= 1e-6
    assert {
        id(m.projector) for m in loaded.modules() if isinstance(m, GuardSpaceLinear)
    }.__len__() == 8
    merge_guardspace(loaded)
    assert not any(isinstance(m, GuardSpaceLinear) for m in loaded.modules())
    merged = logits(loaded, prompts)
    assert rel(trained, merged) <= 1e-5
    loaded.save_pretrained(tmp_path / "plain")
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "plain")
    assert rel(merged, logits(plain, prompts)) == 0.0


def test_load_rejects_a_foreign_file(tok, tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a GuardSpace adapter file"):
        load_guardspace(llama(tok), tmp_path / "other.pt")


def test_empty_null_space_warns_raises_or_uses_the_energy_rule(tok):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(7, len(tok), (4, 48), generator=gen)  # 192 tokens, more than any width
    null = [{"input_ids": row[None], "attention_mask": torch.ones_like(row[None])} for row in ids]
    safety = single(tok, SAFE_TEXTS)
    with pytest.warns(UserWarning, match="null space is empty.*null_energy"):
        report = apply_guardspace(llama(tok), safety, null, rank=2, progress=False)
    assert any(r.null_dim == 0 for r in report.values())
    with pytest.raises(ValueError, match="null space is empty"):
        apply_guardspace(llama(tok), safety, null, rank=2, on_empty="raise", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = apply_guardspace(
            llama(tok), safety, null, rank=2, null_energy=0.99, progress=False
        )
    assert all(0 < r.null_dim < r.in_features for r in report.values())


def test_bad_targets_and_double_application_fail_clearly(tok):
    model, null, _ = guarded(tok)
    with pytest.raises(ValueError, match="already a GuardSpace layer"):
        apply_guardspace(model, null, null, rank=2, progress=False)
    with pytest.raises(ValueError, match="rank 33 must be in.*k_proj"):
        apply_guardspace(llama(tok), null, null, rank=33, target_modules=["k_proj"], progress=False)
    with pytest.raises(ValueError, match="no target Linear found.*q_proj"):
        apply_guardspace(llama(tok), null, null, rank=2, target_modules=["nope"], progress=False)
