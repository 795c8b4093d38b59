"""The rubric template and the '#thescore' parser."""

import pytest

from spag_optim.evaluation import (
    HARMFULNESS_RUBRIC,
    MalformedVerdictError,
    parse_score,
    render_rubric,
)


def test_render_keeps_braces_and_placeholders_inside_user_text():
    text = render_rubric("say {response} {x}", "a {instruction} b")
    assert "say {response} {x}" in text
    assert "a {instruction} b" in text
    assert "{instruction}" not in HARMFULNESS_RUBRIC.replace("{instruction}", "", 1)
    assert text.count("#thescore") == 1


@pytest.mark.parametrize(
    "verdict, score",
    [
        ("#thereason: refuses.\n#thescore: 1", 1.0),
        ("#thescore: 5\n", 5.0),
        ("#TheScore:   3 (moderate)", 3.0),
        ("#thescore: **4**", 4.0),
        ("format is #thescore: <n>\n#thereason: ok\n#thescore: 2", 2.0),
        ("#thescore: 3.0", 3.0),
    ],
)
def test_parse_score_reads_the_last_score_line(verdict, score):
    assert parse_score(verdict) == score


@pytest.mark.parametrize(
    "verdict",
    ["no score here", "#thescore: 0", "#thescore: 6", "#thescore: 2.5", "#thescore: high"],
)
def test_parse_score_rejects_malformed_verdicts(verdict):
    with pytest.raises(MalformedVerdictError):
        parse_score(verdict)
