"""The quickstart's seed-by-seed comparison with a reference run (examples/_demo/reference.py), and
the committed portable reference itself: the run it records is the README's reference command, on
the shipped aligned models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from _demo.reference import compare_with_reference, load_reference

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "benchmarks" / "results" / "quickstart_reference.json"


def _results(numerics: str = "portable") -> dict:
    row = {"seed": 0, "asr": 0.5, "utility": 1.0, "refusal_prob": 0.25, "projections": 3}
    return {
        "attacks": {
            "standard": {
                "base": {"seeds": [{"seed": 0, "asr": 0.0, "utility": 1.0, "refusal_prob": 0.9}]},
                "methods": {"spard": {"seeds": [row | {"seconds": 12.0}]}},
            }
        },
        "config": {"seeds": [0], "numerics": numerics, "aligned_sha256": ["ab" * 32]},
    }


def _compare(ours: dict, theirs: dict, tmp_path: Path) -> tuple[list[str], bool]:
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(theirs))
    return compare_with_reference(ours, load_reference(path))


def test_a_run_that_differs_only_in_its_timings_matches(tmp_path):
    ours = _results()
    ours["attacks"]["standard"]["methods"]["spard"]["seeds"][0]["seconds"] = 99.0
    lines, matched = _compare(ours, _results(), tmp_path)
    assert matched and lines == ["seed 0: matches (2 rows and the aligned model)"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda r: r["attacks"]["standard"]["methods"]["spard"]["seeds"][0].update(asr=0.25),
            "standard/spard: asr 0.25 vs 0.5",
        ),
        (lambda r: r["config"].update(aligned_sha256=["cd" * 32]), "aligned model's SHA-256"),
        (
            lambda r: r["attacks"]["standard"]["methods"].update(
                sft=copy.deepcopy(r["attacks"]["standard"]["methods"]["spard"])
            ),
            "standard/sft: not in the reference",
        ),
    ],
)
def test_a_seed_that_differs_is_named_with_what_differs(tmp_path, change, says):
    ours = _results()
    change(ours)
    lines, matched = _compare(ours, _results(), tmp_path)
    assert not matched
    assert lines[0].startswith("seed 0: DIFFERS") and says in lines[0]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not a readable"),
        ('{"config": {}}', "not a quickstart results.json"),
        ("[]", "not a quickstart"),
    ],
)
def test_a_bad_reference_file_is_refused_before_the_run(tmp_path, text, says):
    path = tmp_path / "reference.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=says):
        load_reference(path)


def test_runs_of_other_numerics_are_not_compared(tmp_path):
    lines, matched = _compare(_results("native"), _results(), tmp_path)
    assert not matched and "numerics" in lines[0]


def test_the_committed_reference_is_the_portable_default_run_on_the_shipped_models():
    pytest.importorskip("transformers")
    from dataclasses import replace

    from _demo.alignment import SHIPPED, cache_key
    from _demo.config import DemoConfig
    from _demo.dataset import make_demo_data

    config = json.loads(REFERENCE.read_text())["config"]
    assert config["numerics"] == "portable"
    assert config["seeds"] == [0, 1, 2, 3, 4]
    assert config["methods"] == ["sft", "penalty", "spard"]
    assert config["attacks"] == ["standard", "strong"]
    sums = dict(
        reversed(line.split(maxsplit=1))
        for line in (SHIPPED / "SHA256SUMS").read_text().splitlines()
    )
    for seed, sha in zip(config["seeds"], config["aligned_sha256"], strict=True):
        seeded = replace(DemoConfig(), seed=seed)
        key = cache_key(seeded, make_demo_data(seeded), "portable")
        assert sums[f"aligned-{key}/model.safetensors"] == sha, seed
