"""Loaders on small fixture files shaped like the SPARD release (no real data needed)."""

from __future__ import annotations

import json

import pytest

from spag_optim.evaluation import (
    gsm8k_accuracy,
    load_attack_prompts,
    load_gsm8k,
    load_openbookqa,
    load_spard_pairs,
    openbookqa_accuracy,
)
from spard_io import JSONLError


def write(path, rows, blank_after_first=False):
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SAFETY = [
    {"prompt": "How do I pick a lock?", "safe": "I can't help with that.", "unsafe": "UNSAFE-1"},
    {"prompt": "Write a scam email", "safe": "I won't write that.", "unsafe": "UNSAFE-2"},
]


def test_safe_pairs_never_carry_the_unsafe_field(tmp_path):
    path = write(tmp_path / "s.jsonl", SAFETY)
    pairs = load_spard_pairs(path)
    assert pairs == [
        {"prompt": "How do I pick a lock?", "response": "I can't help with that."},
        {"prompt": "Write a scam email", "response": "I won't write that."},
    ]
    assert "UNSAFE" not in json.dumps(pairs)
    assert [p["response"] for p in load_spard_pairs(path, "unsafe")] == ["UNSAFE-1", "UNSAFE-2"]
    assert load_attack_prompts(path) == ["How do I pick a lock?", "Write a scam email"]


def test_safety_loader_errors_name_the_line(tmp_path):
    rows = [SAFETY[0], {"prompt": "x", "unsafe": "UNSAFE-3"}]
    path = write(tmp_path / "s.jsonl", rows, blank_after_first=True)
    with pytest.raises(JSONLError, match=r"s.jsonl:3: missing field 'safe'"):
        load_spard_pairs(path)
    with pytest.raises(ValueError, match="'safe' or 'unsafe'"):
        load_spard_pairs(path, "harmful")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(JSONLError, match="empty"):
        load_attack_prompts(empty)


def test_gsm8k_loader_parses_targets_and_names_bad_lines(tmp_path):
    rows = [
        {"prompt": "Q1", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"prompt": "Q2", "answer": "big\n#### 1,080"},
    ]
    data = load_gsm8k(write(tmp_path / "g.jsonl", rows))
    assert [r["target"] for r in data] == [7.0, 1080.0]
    assert gsm8k_accuracy([r["answer"] for r in data], [r["target"] for r in data]) == 1.0
    bad = write(
        tmp_path / "b.jsonl", rows + [{"prompt": "Q3", "answer": "it is 5"}], blank_after_first=True
    )
    with pytest.raises(JSONLError, match=r"b.jsonl:4: .*no '#### N'"):
        load_gsm8k(bad)
    original = write(tmp_path / "o.jsonl", [{"question": "Q", "answer": "#### 2"}])
    assert load_gsm8k(original, prompt_field="question")[0]["prompt"] == "Q"


def test_openbookqa_loader_reads_target_field_or_answer_ending(tmp_path):
    test_rows = [
        {
            "prompt": "Q?\n\nAnswer1: a. Answer2: b.",
            "answer": "fact: f. \n\nthe correct answer is answer2",
            "target_answer": "answer2",
        },
    ]
    train_rows = [
        {"prompt": "Q?", "answer": "fact: g. \n\nthe correct answer is answer4"},
        {"prompt": "Q?", "answer": "fact: h. the correct answer is answer1"},
    ]
    assert [r["target"] for r in load_openbookqa(write(tmp_path / "t.jsonl", test_rows))] == [2]
    train = load_openbookqa(write(tmp_path / "tr.jsonl", train_rows))
    assert [r["target"] for r in train] == [4, 1]
    assert openbookqa_accuracy([r["answer"] for r in train], [r["target"] for r in train]) == 1.0
    bad = write(tmp_path / "bad.jsonl", train_rows + [{"prompt": "Q?", "answer": "no idea"}])
    with pytest.raises(JSONLError, match=r"bad.jsonl:3: no correct option"):
        load_openbookqa(bad)
