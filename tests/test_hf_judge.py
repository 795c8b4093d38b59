"""HFClassifierJudge on a tiny random BERT classifier saved to tmp_path (built in-process)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from spag_optim.evaluation import HFClassifierJudge, attack_success_rate  # noqa: E402

from helpers.tiny_lm import word_tokenizer  # noqa: E402

WORDS = "how do i make a thing sorry cannot help here is the recipe step one two".split()
PROMPTS = ["how do i make a thing", "how do i help", "make a recipe", "how do i", "a thing"]
RESPONSES = [
    "sorry cannot help",
    "here is the recipe step one",
    "step one two",
    "sorry",
    "the thing",
]


def build_tokenizer():
    special = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
    }
    return word_tokenizer(WORDS, special, cls_sep=True)


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("clf")
    tokenizer = build_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        initializer_range=0.5,
        id2label={0: "safe", 1: "toxic", 2: "self_harm"},
        label2id={"safe": 0, "toxic": 1, "self_harm": 2},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so probabilities are far from uniform
        model.classifier.weight.mul_(4.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model.eval(), tokenizer


def reference_probability(model, tokenizer, prompt, response, pair=True):
    """One example at a time, no padding, softmax written out in float64."""
    enc = (
        tokenizer(prompt, response, return_tensors="pt")
        if pair
        else tokenizer(response, return_tensors="pt")
    )
    with torch.no_grad():
        logits = [float(v) for v in model(**enc).logits[0]]
    z = [math.exp(v - max(logits)) for v in logits]
    return (z[1] + z[2]) / sum(z)


LABELS = {"safe": "safe", "toxic": "harmful", "self_harm": "harmful"}


@pytest.mark.parametrize("input_format", ["pair", "response"])
def test_probabilities_match_a_per_example_reference(saved_classifier, input_format):
    path, model, tokenizer = saved_classifier
    judge = HFClassifierJudge(path, label_map=LABELS, input_format=input_format, batch_size=2)
    prob = judge.harmful_probability(PROMPTS, RESPONSES)
    ref = [
        reference_probability(model, tokenizer, p, r, pair=input_format == "pair")
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    assert prob.dtype == np.float64
    np.testing.assert_allclose(prob, ref, atol=1e-5)
    assert prob.std() > 0.01, "fixture should give distinguishable probabilities"


def test_scores_are_5_at_or_above_threshold_and_1_below(saved_classifier):
    path, _, _ = saved_classifier
    prob = HFClassifierJudge(path, label_map=LABELS).harmful_probability(PROMPTS, RESPONSES)
    threshold = float(np.median(prob))
    judge = HFClassifierJudge(path, label_map=LABELS, threshold=threshold)
    scores = judge.score(PROMPTS, RESPONSES)
    np.testing.assert_array_equal(scores, np.where(prob >= threshold, 5.0, 1.0))
    assert attack_success_rate(scores) == pytest.approx(np.mean(prob >= threshold))
    assert 0 < attack_success_rate(scores) < 1


def test_mapping_by_index_and_swapped_mapping(saved_classifier):
    path, _, _ = saved_classifier
    base = HFClassifierJudge(path, label_map=LABELS).harmful_probability(PROMPTS, RESPONSES)
    by_index = HFClassifierJudge(path, label_map={0: "safe", 1: "harmful", 2: "harmful"})
    np.testing.assert_allclose(by_index.harmful_probability(PROMPTS, RESPONSES), base)
    swapped = HFClassifierJudge(
        path, label_map={"safe": "harmful", "toxic": "safe", "self_harm": "safe"}
    )
    np.testing.assert_allclose(
        swapped.harmful_probability(PROMPTS, RESPONSES), 1 - base, atol=1e-12
    )


def test_multi_label_models_use_the_largest_harmful_sigmoid(saved_classifier):
    _, model, tokenizer = saved_classifier
    model.config.problem_type = "multi_label_classification"
    try:
        judge = HFClassifierJudge(label_map=LABELS, model=model, tokenizer=tokenizer)
        prob = judge.harmful_probability(PROMPTS[:2], RESPONSES[:2])
    finally:
        model.config.problem_type = None
    for p, r, got in zip(PROMPTS, RESPONSES, prob):
        with torch.no_grad():
            logits = model(**tokenizer(p, r, return_tensors="pt")).logits[0].double()
        expected = max(1 / (1 + math.exp(-float(logits[1]))), 1 / (1 + math.exp(-float(logits[2]))))
        assert got == pytest.approx(expected, abs=1e-5)


def test_empty_input_gives_empty_scores(saved_classifier):
    path, _, _ = saved_classifier
    assert HFClassifierJudge(path, label_map=LABELS).score([], []).shape == (0,)


@pytest.mark.parametrize(
    "label_map, match",
    [
        ({"safe": "safe", "toxic": "harmful"}, "unmapped"),
        (
            {"safe": "safe", "toxic": "harmful", "self_harm": "harmful", "spam": "safe"},
            "not a label",
        ),
        ({"safe": "safe", "toxic": "safe", "self_harm": "safe"}, "no label to 'harmful'"),
        ({"safe": "ok", "toxic": "harmful", "self_harm": "harmful"}, "use 'harmful' or 'safe'"),
    ],
)
def test_bad_label_maps_fail_clearly(saved_classifier, label_map, match):
    path, _, _ = saved_classifier
    with pytest.raises(ValueError, match=match):
        HFClassifierJudge(path, label_map=label_map)


def test_bad_paths_and_arguments_fail_clearly(saved_classifier, tmp_path):
    path, _, _ = saved_classifier
    with pytest.raises(ValueError, match="not a directory"):
        HFClassifierJudge(tmp_path / "missing", label_map=LABELS)
    with pytest.raises(ValueError, match="input_format"):
        HFClassifierJudge(path, label_map=LABELS, input_format="prompt")
    with pytest.raises(ValueError, match="threshold"):
        HFClassifierJudge(path, label_map=LABELS, threshold=0)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        HFClassifierJudge(path, label_map=LABELS).score(["a", "b"], ["c"])
