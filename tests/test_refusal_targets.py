"""A tau that means something: calibrate_tau warns when the aligned model does not produce the
given refusals, and refusals_from_model builds the targets from what the model itself answers."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from spag_optim import SafetyBatches, calibrate_tau  # noqa: E402
from spag_optim.evaluation import KeywordRefusalJudge  # noqa: E402
from spag_optim.model_refusals import refusals_from_model  # noqa: E402
from spag_optim.safety_data import PRODUCED_NLL_MAX  # noqa: E402
from spag_optim.warnings import RefusalsNotProducedWarning  # noqa: E402

from helpers.tiny_lm import build_tokenizer, tiny_causal_lm  # noqa: E402

OWN_REFUSAL = "sorry i cannot help with that"
OTHER_REFUSAL = "as a responsible assistant i must decline this request"
REFUSED = ["how do i make poison", "how do i steal a car"]
ANSWERED = "how do i bake bread"
ANSWER = "mix flour and water"


@pytest.fixture(scope="module")
def aligned():
    """A tiny LM trained to refuse REFUSED with OWN_REFUSAL and to answer ANSWERED."""
    pairs = [(p, OWN_REFUSAL) for p in REFUSED] + [(ANSWERED, ANSWER)]
    tok = build_tokenizer([p + " " + r for p, r in pairs] + [OTHER_REFUSAL])
    model = tiny_causal_lm(tok, seed=0, hidden=32, intermediate=64)
    batch = next(SafetyBatches.from_pairs(pairs, tok, batch_size=len(pairs), shuffle=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return model.eval(), tok


def calibrated(model, tok, pairs, **kwargs):
    return calibrate_tau(
        model, SafetyBatches.from_pairs(pairs, tok, batch_size=2), num_batches=1, **kwargs
    )


def test_calibrate_tau_warns_when_the_model_does_not_produce_the_refusals(aligned):
    model, tok = aligned
    with pytest.warns(
        RefusalsNotProducedWarning, match="does not produce these refusals"
    ) as caught:
        tau = calibrated(model, tok, [(p, OTHER_REFUSAL) for p in REFUSED])
    assert tau > PRODUCED_NLL_MAX and "refusals_from_model" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrated(model, tok, [(p, OWN_REFUSAL) for p in REFUSED]) < PRODUCED_NLL_MAX
        # A loss that is not a per-token NLL: the caller says so and the threshold does not apply.
        calibrated(model, tok, [(p, OTHER_REFUSAL) for p in REFUSED], loss_is_nll=False)


def test_refusals_from_model_keeps_the_models_own_refusals(aligned):
    model, tok = aligned
    pairs = refusals_from_model(
        model, tok, [*REFUSED, ANSWERED], judge=KeywordRefusalJudge(), max_new_tokens=10
    )
    assert pairs == [(p, OWN_REFUSAL) for p in REFUSED]  # the answered prompt is left out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model says its own refusals: no warning
        assert calibrated(model, tok, pairs) < PRODUCED_NLL_MAX
    with pytest.raises(ValueError, match="refused none of the 1 prompts"):
        refusals_from_model(model, tok, [ANSWERED], max_new_tokens=10)


def test_tau_calibrate_in_the_trainer_warns_too(aligned, tmp_path):
    from transformers import Trainer, TrainingArguments

    from spag_optim import SPAGOptimizer
    from spag_optim.integrations.trainer import TrainerSafetyClosure, attach_spag

    model, tok = aligned
    safety = TrainerSafetyClosure.from_pairs(
        [(p, OTHER_REFUSAL) for p in REFUSED], tok, batch_size=2
    )
    optimizer = SPAGOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), safety)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    trainer = Trainer(
        model=model,
        args=args,
        optimizers=(optimizer, None),
        data_collator=safety.batches.collate_fn,
    )
    with pytest.warns(RefusalsNotProducedWarning, match="does not produce these refusals"):
        attach_spag(trainer, tau="calibrate", calibration_batches=1)
    assert optimizer.tau > PRODUCED_NLL_MAX
