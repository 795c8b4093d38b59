"""The pieces compose as the demo will use them: a tiny causal LM, each baseline, a judge, a table."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from spag_optim import SafetyBatches, calibrate_tau, make_safety_closure  # noqa: E402
from spag_optim.baselines import SafeInstrDataset  # noqa: E402
from spag_optim.evaluation import KeywordRefusalJudge, format_table, summarize_scores  # noqa: E402

from helpers.defenses import build_defense  # noqa: E402
from helpers.tiny_lm import tiny_causal_lm  # noqa: E402

VOCAB = 48


def example(prompt, response):
    """Prompt tokens masked with -100 in the labels: the loss is on the response only."""
    ids = torch.tensor(prompt + response)
    labels = torch.tensor([-100] * len(prompt) + response)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def dataset(seed, n, response_start):
    g = torch.Generator().manual_seed(seed)
    return [
        example(
            torch.randint(3, 20, (5,), generator=g).tolist(),
            torch.randint(response_start, response_start + 8, (4,), generator=g).tolist(),
        )
        for _ in range(n)
    ]


METHODS = ("sft", "spag", "penalty", "lisa", "safegrad")


def build_method(name, inner, closure, tau):
    """SFT is the plain inner optimizer; SPAG and the penalty (with the library's lam) take the
    calibrated tau; Lisa runs a 2 + 4 cycle with the library's rho."""
    if name == "sft":
        return inner
    options = {
        "spag": {"tau": tau},
        "penalty": {"lam": 1.0, "tau": tau},
        "lisa": {"alignment_steps": 2, "finetune_steps": 4, "rho": 1.0},
    }
    return build_defense(name, inner, closure, **options.get(name, {}))


def test_every_method_trains_a_causal_lm_and_lands_in_the_table():
    safe = dataset(1, 12, response_start=20)  # "refusals": tokens 20-27
    user = dataset(2, 24, response_start=30)  # user task: tokens 30-37
    results = {}
    for name in METHODS:
        model = tiny_causal_lm(VOCAB, kv_heads=2, max_positions=32)
        train_data = SafeInstrDataset(user, safe, fraction=0.1, seed=0) if name == "sft" else user
        batches = SafetyBatches(safe, batch_size=4, seed=0)
        tau = calibrate_tau(model, SafetyBatches(safe, batch_size=4, seed=1), num_batches=2)
        opt = build_method(
            name,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            make_safety_closure(model, batches),
            tau,
        )
        loader = torch.utils.data.DataLoader(train_data, batch_size=4, shuffle=False)
        for _, batch in zip(range(6), loader):
            opt.zero_grad()
            if not getattr(opt, "is_alignment_step", False):
                model(**batch).loss.backward()
            opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
        if hasattr(opt, "num_steps"):
            assert opt.num_steps == 6
        # a stand-in "generation": refuse when the model prefers refusal tokens after a prompt
        with torch.no_grad():
            prompts = torch.stack([b["input_ids"][:5] for b in safe[:6]])
            logits = model(input_ids=prompts).logits[:, -1]
        refuses = logits[:, 20:28].max(1).values > logits[:, 30:38].max(1).values
        responses = ["I'm sorry, I can't." if r else "Sure." for r in refuses.tolist()]
        scores = KeywordRefusalJudge().score(["p"] * len(responses), responses)
        results[name] = {"safety": {"toy": summarize_scores(scores)}, "utility": {"toy": 0.5}}
    table = format_table(results)
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]] == list(METHODS)
