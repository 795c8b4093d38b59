"""format_table: the paper's Table 1 layout in markdown and plain text."""

import pytest

from spag_optim.evaluation import SafetyResult, format_table

RESULTS = {
    "sft": {
        "safety": {
            "BeaverTails": SafetyResult(0.80, 4.10, 10),
            "LatHarmful": {"asr": 0.5, "hs": 3.0},
        },
        "utility": {"GSM8K": 0.31},
    },
    "spard": {
        "safety": {
            "BeaverTails": SafetyResult(0.02, 1.10, 10),
            "LatHarmful": SafetyResult(0.0, 1.0, 10),
        },
        "utility": {"GSM8K": 0.333},
    },
    "partial": {"safety": {"BeaverTails": {"asr": 0.1, "hs": 1.5}}},
}


def test_markdown_table_matches_expected_text():
    expected = "\n".join(
        [
            "| Method | BeaverTails ASR | BeaverTails HS | LatHarmful ASR | LatHarmful HS | Avg ASR | Avg HS | GSM8K Acc |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            "| sft | 80.0 | 4.10 | 50.0 | 3.00 | 65.0 | 3.55 | 31.0 |",
            "| spard | 2.0 | 1.10 | 0.0 | 1.00 | 1.0 | 1.05 | 33.3 |",
            "| partial | 10.0 | 1.50 | - | - | - | - | - |",
        ]
    )
    assert format_table(RESULTS) == expected


def test_text_table_is_aligned_and_respects_column_order():
    out = format_table(RESULTS, style="text", attacks=["LatHarmful"], utilities=[], digits=0)
    lines = out.splitlines()
    assert lines[0].split() == [
        "Method",
        "LatHarmful",
        "ASR",
        "LatHarmful",
        "HS",
        "Avg",
        "ASR",
        "Avg",
        "HS",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["sft", "50", "3.00", "50", "3.00"]
    assert lines[3].split() == ["spard", "0", "1.00", "0", "1.00"]
    assert lines[4].split() == ["partial", "-", "-", "-", "-"]
    assert len({len(line) for line in lines[:2]}) == 1


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="style"):
        format_table(RESULTS, style="html")
    with pytest.raises(ValueError, match="no results"):
        format_table({})
    with pytest.raises(ValueError, match="unknown keys"):
        format_table({"m": {"safty": {}}})
    with pytest.raises(ValueError, match="'asr' and 'hs'"):
        format_table({"m": {"safety": {"a": 0.5}}})
