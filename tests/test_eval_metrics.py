"""ASR/HS summaries, GSM8K and OpenBookQA answer extraction and accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spag_optim.evaluation import (
    KeywordRefusalJudge,
    SafetyResult,
    attack_success_rate,
    evaluate_safety,
    extract_choice,
    extract_gsm8k_answer,
    gsm8k_accuracy,
    openbookqa_accuracy,
    summarize_scores,
)


def test_summarize_scores_matches_hand_computation():
    result = summarize_scores([1, 2, 3, 5, 2.5])
    assert result == SafetyResult(asr=3 / 5, hs=13.5 / 5, n=5)
    assert result.to_dict() == {"asr": 0.6, "hs": 2.7, "n": 5}


@pytest.mark.parametrize("bad", [[], [[1, 2]], [0.5], [6], [float("nan")]])
def test_summarize_scores_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        summarize_scores(bad)


def test_a_nan_score_is_an_error_not_harmless():
    with pytest.raises(ValueError, match=r"scores \[1\] are NaN"):
        attack_success_rate([5.0, float("nan"), 1.0])
    assert attack_success_rate([5.0, 1.0, 3.0]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"phrases": "sorry"}, TypeError, "single string"),
        ({"phrases": []}, ValueError, "at least one"),
        ({"phrases": ["i'm sorry", ""]}, ValueError, "non-empty"),
        ({"phrases": ["  "]}, ValueError, "non-empty"),
        ({"window": -5}, ValueError, "window"),
        ({"window": 0}, ValueError, "window"),
        ({"window": True}, ValueError, "window"),
    ],
)
def test_keyword_judge_rejects_phrases_and_windows_that_would_mislead(kwargs, error, message):
    with pytest.raises(error, match=message):
        KeywordRefusalJudge(**kwargs)
    judge = KeywordRefusalJudge(["sorry"], window=20)
    scores = judge.score(["p", "p"], ["Sorry, no.", "Sure: the answer, sorry"])
    assert scores.tolist() == [1.0, 5.0]


def test_evaluate_safety_per_attack_set():
    judge = KeywordRefusalJudge()
    prompts = {"a": ["p1", "p2"], "b": ["p3"]}
    responses = {"a": ["I'm sorry, no.", "Sure, here it is."], "b": ["I cannot help."]}
    out = evaluate_safety(judge, prompts, responses)
    assert out == {"a": SafetyResult(0.5, 3.0, 2), "b": SafetyResult(0.0, 1.0, 1)}
    with pytest.raises(ValueError, match="attack sets differ"):
        evaluate_safety(judge, prompts, {"a": responses["a"]})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", 18.0),
        ("#### 1,080", 1080.0),
        ("#### $2,125.50", 2125.5),
        ("#### -3", -3.0),
        ("first #### 4 then corrected #### 5", 5.0),
        ("so the total is 42 apples.", 42.0),
        ("no numbers at all", None),
        ("####  .5", 0.5),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_extract_gsm8k_strict_mode_needs_the_marker():
    assert extract_gsm8k_answer("the total is 42", fallback_last_number=False) is None
    assert extract_gsm8k_answer("#### 42", fallback_last_number=False) == 42.0


def test_gsm8k_accuracy_compares_numbers_not_strings():
    responses = ["#### 1,000", "answer: 18.0", "#### 7", "I don't know"]
    targets = ["work...\n#### 1000", "#### 18", 8, "#### 3"]
    assert gsm8k_accuracy(responses, targets) == pytest.approx(2 / 4)
    assert gsm8k_accuracy(responses, targets, fallback_last_number=False) == pytest.approx(1 / 4)


def test_gsm8k_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="2 responses but 1 targets"):
        gsm8k_accuracy(["1", "2"], ["#### 1"])
    with pytest.raises(ValueError, match="at least one"):
        gsm8k_accuracy([], [])
    with pytest.raises(ValueError, match="target 0"):
        gsm8k_accuracy(["1"], ["no final answer here"])
    with pytest.raises(TypeError, match="response 1 is int"):
        gsm8k_accuracy(["1", 2], [1, 2])
    with pytest.raises(TypeError, match="response 0 is NoneType"):
        openbookqa_accuracy([None], [1])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fact: the sun is a star. \n\nthe correct answer is answer4", 4),
        ("answer2", 2),
        ("Answer 3", 3),
        ("The answer is (B).", 2),
        ("The answer is C", 3),
        ("(A) is right", 1),
        ("answer1 or answer2, hard to say", None),
        ("answer1 looks tempting, but the correct answer is answer3", 3),
        ("the answer is a bicycle", None),
        ("I am not sure", None),
        ("answer7", None),
        ("Answer format: answer1/answer2/answer3/answer4", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_openbookqa_accuracy_accepts_several_target_spellings():
    responses = ["the correct answer is answer2", "(C)", "answer1 answer4", "Answer 4"]
    assert openbookqa_accuracy(responses, ["answer2", "C", 1, 4]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="target 0"):
        openbookqa_accuracy(["answer1"], ["answer9"])
    with pytest.raises(ValueError, match="1 responses but 2 targets"):
        openbookqa_accuracy(["answer1"], [1, 2])


def test_accuracies_are_exact_fractions():
    assert math.isclose(gsm8k_accuracy(["#### 3"] * 3, [3, 3, 4]), 2 / 3)
    assert np.isclose(openbookqa_accuracy(["answer1"] * 4, [1, 2, 1, 1]), 0.75)
