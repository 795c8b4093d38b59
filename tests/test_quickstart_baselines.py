"""The paper's baselines in examples/quickstart.py at its ``--smoke`` size: one run of every
baseline with the same results.json schema, and their plumbing (the safe rows and tau the
optimizer baselines use, Lisa's skipped forward passes, SafeInstr's mix, PTST's test prompt,
GuardSpace's adapters)."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _demo import data  # noqa: E402
from _demo.config import SMOKE  # noqa: E402
from _demo.dataset import make_demo_data  # noqa: E402
from _demo.encoding import encode, with_bos  # noqa: E402
from _demo.methods import METHODS, Method  # noqa: E402
from spag_optim.safety_pairs import PaddingCollator  # noqa: E402

from helpers.quickstart_run import BASELINES, SUMMARY, run_smoke  # noqa: E402


@pytest.fixture(scope="module")
def baselines_run(tmp_path_factory):
    """One smoke run of every baseline (and sft, to compare against)."""
    out = tmp_path_factory.mktemp("baselines")
    return run_smoke(out, "--methods", ",".join(("sft",) + BASELINES), "--seeds", "0")


def test_every_baseline_runs_and_is_reported_with_the_same_schema(baselines_run):
    assert list(baselines_run["methods"]) == ["sft", *BASELINES]
    for name, r in baselines_run["methods"].items():
        assert set(r) == SUMMARY, name
        (row,) = r["seeds"]
        assert 0.0 <= row["asr"] <= 1.0 and 0.0 <= row["utility"] <= 1.0, name
        assert row["seconds"] > 0.0, name
        assert r["asr_ci"] is None  # one seed: no interval, and no verdict
        assert r["vs_sft"] in (None, "n<2")
    # Only SPAG, the penalty's hinge and SafeGrad's surgery test the safety loss on a step.
    assert all(
        baselines_run["methods"][n]["seeds"][0]["projections"] == 0
        for n in ("sft", "safeinstr", "lisa", "ptst")
    )
    assert baselines_run["config"]["methods"] == ["sft", *BASELINES]


def test_the_optimizer_baselines_use_the_selected_safe_rows_and_the_demo_tau():
    import torch

    from _demo import optimizers
    from _demo.methods import LISA, PENALTY_LAMBDA
    from spag_optim.baselines import LisaOptimizer, PenaltyOptimizer, SafeGradOptimizer

    param = torch.nn.Parameter(torch.ones(2))
    closure = lambda: (param**2).sum()  # noqa: E731
    built = {
        name: METHODS[name].wrapper(
            torch.optim.AdamW([param]), closure, SMOKE, **METHODS[name].options
        )
        for name in ("penalty", "lisa", "safegrad")
    }
    assert isinstance(built["penalty"], PenaltyOptimizer)
    assert (built["penalty"].tau, built["penalty"].lam) == (SMOKE.tau, PENALTY_LAMBDA)
    assert isinstance(built["lisa"], LisaOptimizer)
    assert (built["lisa"].alignment_steps, built["lisa"].finetune_steps, built["lisa"].rho) == (
        LISA["alignment_steps"],
        LISA["finetune_steps"],
        LISA["rho"],
    )
    assert isinstance(built["safegrad"], SafeGradOptimizer)
    assert all(
        METHODS[n].selection == METHODS["spard"].selection
        for n in ("penalty", "safeinstr", "lisa", "safegrad")
    )
    assert METHODS["safeinstr"].wrapper is None and METHODS["safeinstr"].mix_safe
    assert METHODS["ptst"].selection is None and METHODS["ptst"].wrapper is None
    assert optimizers.interventions(torch.optim.AdamW([param])) == 0


def test_lisa_skips_the_utility_forward_on_its_alignment_steps():
    """Every step runs exactly one forward: the utility batch's, or on an alignment step only the
    safety closure's. Without the skip the loop would run both on alignment steps."""
    import math

    import torch

    from _demo.model import ModelSize, build_model
    from _demo.training import train
    from spag_optim import SafetyBatches, make_safety_closure
    from spag_optim.baselines import LisaOptimizer

    d = make_demo_data(SMOKE)
    tok = d.tokenizer
    model = build_model(tok, ModelSize(hidden=16, layers=1), seed=0)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    batches = SafetyBatches(
        encode(tok, d.safe_pool[:4]),
        batch_size=2,
        collate_fn=PaddingCollator(tok.pad_token_id),
        seed=0,
    )
    opt = LisaOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        make_safety_closure(model, batches),
        alignment_steps=1,
        finetune_steps=2,
    )
    rows = encode(tok, d.finetune[:20])
    losses = train(
        model, rows, opt, epochs=1, batch_size=4, pad_id=tok.pad_token_id, seed=0, progress=False
    )
    assert len(losses) == 5 == opt.num_steps  # the alignment steps consumed their batches
    alignment = [i for i, loss in enumerate(losses) if math.isnan(loss)]
    assert alignment == [0, 3]  # steps 0 and 3 of the 1 + 2 cycle
    assert len(forwards) == len(losses)


def test_safeinstr_mix_takes_every_selected_row_once():
    from spag_optim.baselines import safeinstr_mix

    for n in (1, 7, 40, 44, 440, 999):
        for k in sorted({1, 2, 13, n}):
            rows, safe = list(range(n)), [f"safe{j}" for j in range(k)]
            mixed = safeinstr_mix(rows, safe, fraction=len(safe) / len(rows), seed=0)
            assert sorted(map(str, mixed)) == sorted(map(str, rows + safe)), (n, k)


def test_ptst_tests_with_the_system_prompt_in_vocabulary_and_trains_without_it():
    from _demo.tokenizer import SAFETY_SYSTEM_PROMPT, chat_prompt

    tok = make_demo_data(SMOKE).tokenizer
    render = METHODS["ptst"].eval_prompt
    prompt = "how do i fix a flat tire ?"
    assert render(prompt) == f"{SAFETY_SYSTEM_PROMPT} {chat_prompt(prompt)}"
    assert all(m.eval_prompt is chat_prompt for n, m in METHODS.items() if n != "ptst")
    ids = tok(render(prompt), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    row = tok(with_bos(tok, render)(prompt), add_special_tokens=False)["input_ids"]
    assert row == [tok.bos_token_id] + ids


def test_the_system_prompt_words_come_after_the_data_words_so_their_ids_did_not_move():
    from _demo.tokenizer import SAFETY_SYSTEM_PROMPT, chat_prompt

    vocab = make_demo_data(SMOKE).tokenizer.get_vocab()
    base = sorted(set(data.vocabulary()) | set(chat_prompt("").split()))
    assert [vocab[w] for w in base] == list(range(4, 4 + len(base)))  # after the 4 specials
    extra = [w for w in dict.fromkeys(SAFETY_SYSTEM_PROMPT.split()) if w not in base]
    assert extra and [vocab[w] for w in extra] == list(
        range(4 + len(base), 4 + len(base) + len(extra))
    )
    assert len(vocab) == 4 + len(base) + len(extra)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"selection": None}, "needs safe data"),  # the default wrapper is SPAG
        ({"selection": None, "wrapper": None, "mix_safe": True}, "needs safe data"),
        ({"selection": "dpp", "wrapper": None}, "unused"),
    ],
)
def test_a_method_that_would_ignore_or_lack_its_safe_data_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Method("broken", **kwargs)


def test_guardspace_rows_train_guardspace_adapters_from_the_safe_rows():
    """``guardspace`` swaps LoRA for GuardSpace's adapters (AdamW alone); ``guardspace_spard`` adds
    SPAG; both build the adapters from the method's safe rows and train nothing else."""

    import torch

    from _demo.attack import run_attack
    from _demo.model import ModelSize, build_model
    from lora_targets import DEFAULT_LORA_TARGETS
    from spag_optim.guardspace import GuardSpaceLinear

    assert {"guardspace", "guardspace_spard"} <= set(METHODS)
    d = make_demo_data(SMOKE)
    model = build_model(d.tokenizer, ModelSize(hidden=32, layers=1), seed=0)
    config = replace(SMOKE, tau=0.0)  # tau 0: SPAG projects on every step
    for name in ("guardspace", "guardspace_spard"):
        out = run_attack(
            model,
            d.tokenizer,
            d.finetune,
            METHODS[name],
            d.safe_pool[:4],
            config,
            desc=name,
            progress=False,
        )
        layers = [m for m in out.model.modules() if isinstance(m, GuardSpaceLinear)]
        assert len(layers) == len(DEFAULT_LORA_TARGETS)
        assert all(not torch.equal(m.adapter_B, m.init_B) for m in layers)
        trained = {n for n, p in out.model.named_parameters() if p.requires_grad}
        assert trained and all(n.endswith(("adapter_A", "adapter_B")) for n in trained)
        assert (out.projections > 0) == (name == "guardspace_spard")
    with pytest.raises(ValueError, match="needs safe data"):
        Method("x", None, wrapper=None, adapter="guardspace")
