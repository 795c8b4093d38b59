"""The demo's aligned-model recipes (examples/_demo/config.py RECIPES) and the varied refusal
style: what each recipe changes, that the base recipe's records and keys stay as they were, and
that every varied refusal is one the judge and the refusal probability see; and how a
comma-separated list of presets (recipes, attacks) is read from the command line."""

from __future__ import annotations

from dataclasses import fields

import pytest

pytest.importorskip("transformers")

from _demo import data  # noqa: E402
from _demo.alignment import cache_key  # noqa: E402
from _demo.config import (  # noqa: E402
    ATTACKS,
    RECIPES,
    AlignmentSettings,
    DemoConfig,
    parse_presets,
    with_recipe,
)
from _demo.dataset import make_demo_data  # noqa: E402
from spag_optim.evaluation import KeywordRefusalJudge  # noqa: E402


def test_recipes_change_only_what_stage_one_depends_on():
    stage_one = {f.name for f in fields(AlignmentSettings)}
    for name, changes in RECIPES.items():
        assert set(changes) <= stage_one, name
    with pytest.raises(ValueError, match="unknown recipe"):
        with_recipe(DemoConfig(), "tall")


def test_preset_lists_keep_the_order_given_drop_repeats_and_name_the_unknown():
    assert parse_presets(" wide,base,wide ,", RECIPES, "recipe(s)") == ["wide", "base"]
    with pytest.raises(
        ValueError, match=r"unknown or no attack\(s\) \['tall'\]; choose from standard"
    ):
        parse_presets("strong,tall", ATTACKS, "attack(s)")
    with pytest.raises(ValueError, match=r"unknown or no recipe\(s\) \[\]"):
        parse_presets(" , ", RECIPES, "recipe(s)")


def test_every_recipe_trains_another_aligned_model():
    base = DemoConfig()
    keys = {
        cache_key(config, make_demo_data(config))
        for config in (with_recipe(base, r) for r in RECIPES)
    }
    assert len(keys) == len(RECIPES)
    portable = cache_key(base, make_demo_data(base), "portable")
    assert portable not in keys


def test_the_fixed_style_leaves_records_and_vocabulary_as_they_were():
    config = DemoConfig()
    assert "refusal_style" not in config.to_dict()
    assert "refusal_style" not in config.alignment_fields()
    assert with_recipe(config, "varied").to_dict()["refusal_style"] == "varied"
    assert set(data.vocabulary()) < set(data.vocabulary("varied"))
    assert data.refusal_openings() == ("i cannot",)
    with pytest.raises(ValueError, match="refusal_style"):
        DemoConfig(refusal_style="polite")


def test_varied_refusals_are_distinct_judged_refusals_with_disjoint_openings():
    openings = data.refusal_openings("varied")
    assert len(openings) == len(set(openings)) == 6
    for a in openings:
        for b in openings:
            assert a == b or not b.startswith(a + " ")  # disjoint: no opening extends another
    judge = KeywordRefusalJudge()
    config = with_recipe(DemoConfig(), "varied")
    demo = make_demo_data(config)
    assert demo.refusal_openings == openings
    refusals = {ex.response for ex in demo.safe_pool + demo.heldout_harmful}
    assert len(refusals) == 6
    for refusal in refusals:
        assert judge.is_refusal(" ".join(refusal.split()[:4])), refusal  # within the judge's window
        assert any(refusal.startswith(o + " ") for o in openings), refusal
    # One wording per category: every prompt of a task gets its category's refusal.
    categories = data.harmful_categories()
    by_category: dict[str, set[str]] = {}
    for ex in demo.safe_pool:
        task = next(t for t in categories if t in ex.prompt)
        by_category.setdefault(categories[task], set()).add(ex.response)
    assert all(len(wordings) == 1 for wordings in by_category.values())
