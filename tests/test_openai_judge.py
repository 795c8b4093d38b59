"""OpenAIJudge against a fake OpenAI-compatible server on 127.0.0.1 (no network, no sleeps;
``helpers/fake_openai_server.py``)."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest

from spag_optim.evaluation import (
    JudgeRequestError,
    MalformedVerdictError,
    OpenAIJudge,
    attack_success_rate,
)
from spag_optim.evaluation.openai_judge import _chat_url
from spag_optim.warnings import MalformedJudgeReplyWarning

from helpers.fake_openai_server import FakeServer

KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def server_factory():
    servers = []

    def make(*args, **kwargs):
        servers.append(FakeServer(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("SPARD_TEST_JUDGE_KEY", KEY)


def make_judge(server, sleeps=None, **kwargs):
    kwargs.setdefault("timeout", 5.0)
    return OpenAIJudge(
        "judge-model",
        server.url,
        api_key_env="SPARD_TEST_JUDGE_KEY",
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        **kwargs,
    )


def test_scores_come_back_in_input_order_with_the_key_in_the_header(server_factory):
    server = server_factory()
    judge = make_judge(server, max_workers=3)
    responses = [f"reply SCORE={n}" for n in (5, 1, 3, 2, 4, 1, 5)]
    scores = judge.score(["prompt"] * len(responses), responses)
    np.testing.assert_array_equal(scores, [5, 1, 3, 2, 4, 1, 5])
    assert scores.dtype == np.float64
    assert attack_success_rate(scores) == pytest.approx(4 / 7)
    assert len(server.requests) == 7
    for req in server.requests:
        assert req["path"] == "/v1/chat/completions"
        assert req["auth"] == f"Bearer {KEY}"
        assert req["body"]["model"] == "judge-model"
        assert req["body"]["temperature"] == 0.0
        assert "#thescore" in req["body"]["messages"][0]["content"]


def test_no_key_sends_no_authorization_header(server_factory):
    server = server_factory()
    judge = OpenAIJudge("m", server.url, api_key_env=None, sleep=lambda s: None)
    assert judge.score(["p"], ["SCORE=2"]).tolist() == [2.0]
    assert server.requests[0]["auth"] is None


def test_unset_key_variable_is_named_in_a_clear_error(monkeypatch):
    monkeypatch.delenv("SPARD_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="SPARD_UNSET_KEY is not set"):
        OpenAIJudge("m", "http://127.0.0.1:9/v1", api_key_env="SPARD_UNSET_KEY")


def test_server_error_then_success_is_retried_with_backoff(server_factory):
    server = server_factory([("status", 500, "overloaded", {}), ("status", 503, "busy", {})])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, backoff=0.5, max_retries=3, max_workers=1)
    assert judge.score(["p"], ["SCORE=4"]).tolist() == [4.0]
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_retry_after_header_sets_the_delay(server_factory):
    server = server_factory([("status", 429, "slow down", {"Retry-After": "7"})])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, backoff=0.5, max_backoff=30.0)
    assert judge.score(["p"], ["SCORE=1"]).tolist() == [1.0]
    assert sleeps == [7.0]


def test_timeout_is_retried_then_reported(server_factory):
    server = server_factory(["hang", "hang"])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, timeout=0.2, max_retries=1, backoff=2.0, max_workers=1)
    with pytest.raises(JudgeRequestError, match=r"timed out after 0.2s; gave up after 2 attempts"):
        judge.score(["p"], ["SCORE=3"])
    assert sleeps == [2.0]
    assert len(server.requests) == 2


def test_dropped_connection_then_success(server_factory):
    server = server_factory(["close"])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, backoff=0.25)
    assert judge.score(["p"], ["SCORE=3"]).tolist() == [3.0]
    assert len(server.requests) == 2 and sleeps == [0.25]


def test_refused_connection_is_retried_then_reported():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused at once
    sleeps: list[float] = []
    judge = OpenAIJudge(
        "m",
        f"http://127.0.0.1:{port}/v1",
        api_key_env=None,
        max_retries=2,
        backoff=1.0,
        sleep=sleeps.append,
    )
    with pytest.raises(JudgeRequestError, match="gave up after 3 attempts"):
        judge.score(["p"], ["r"])
    assert sleeps == [1.0, 2.0]


def test_timeout_then_success(server_factory):
    server = server_factory(["hang"])
    judge = make_judge(server, timeout=0.2, max_retries=2)
    assert judge.score(["p"], ["SCORE=5"]).tolist() == [5.0]


def test_malformed_reply_raises_by_default(server_factory):
    server = server_factory([("content", "I think this is fine. Score: high")])
    judge = make_judge(server, max_workers=1)
    with pytest.raises(MalformedVerdictError, match=r"response 0: .*no '#thescore: N' line"):
        judge.score(["p"], ["SCORE=2"])


def test_malformed_reply_fallback_is_counted_and_warned(server_factory):
    server = server_factory([("content", "#thescore: 9")])
    judge = make_judge(server, max_workers=1, on_malformed=5)
    with pytest.warns(MalformedJudgeReplyWarning, match="1 of 2 judge replies had no valid"):
        scores = judge.score(["p", "p"], ["SCORE=1", "SCORE=1"])
    assert scores.tolist() == [5.0, 1.0]
    assert judge.last_malformed == [0]


@pytest.mark.parametrize(
    "action, message",
    [
        (("raw", b"<html>gateway</html>"), "not JSON"),
        (("raw", b'{"error": "quota"}'), "without choices"),
        (("raw", b"[1, 2]"), "without choices"),
        (("content", None), "non-text"),
    ],
)
def test_non_json_body_and_wrong_shape_are_errors_whatever_on_malformed(
    server_factory, action, message
):
    server = server_factory([action, action])
    with pytest.raises(JudgeRequestError, match=message):
        make_judge(server, max_workers=1).score(["p"], ["SCORE=1"])
    with pytest.raises(JudgeRequestError, match=message):  # the fallback is not for broken servers
        make_judge(server, max_workers=1, on_malformed=1).score(["p"], ["SCORE=1"])


def test_redirect_is_not_followed_and_the_key_stays_home(server_factory):
    elsewhere = server_factory()
    target = elsewhere.url + "/chat/completions"
    for code in (301, 302, 307, 308):
        server = server_factory([("status", code, "", {"Location": target})])
        judge = make_judge(server, max_workers=1)
        with pytest.raises(JudgeRequestError, match=f"HTTP {code} redirecting to") as info:
            judge.score(["p"], ["SCORE=1"])
        assert target in str(info.value)
        assert len(server.requests) == 1
    assert elsewhere.requests == []


def test_a_trickling_server_hits_the_total_deadline(server_factory):
    reply = json.dumps({"choices": [{"message": {"content": "#thescore: 1"}}]}).encode()
    server = server_factory([("trickle", reply + b" " * 40, 0.05)])
    judge = make_judge(server, timeout=0.5, max_retries=0)
    with pytest.raises(JudgeRequestError, match=r"timed out after 0.5s; gave up after 1 attempt"):
        judge.score(["p"], ["SCORE=1"])


def test_reply_body_size_is_capped(server_factory):
    reply = json.dumps({"choices": [{"message": {"content": "#thescore: 1" + " " * 5000}}]})
    server = server_factory([("raw", reply.encode())])
    with pytest.raises(JudgeRequestError, match="larger than 1000 bytes"):
        make_judge(server, max_response_bytes=1000).score(["p"], ["SCORE=1"])
    assert make_judge(server).score(["p"], ["SCORE=3"]).tolist() == [3.0]


@pytest.mark.parametrize(
    "header, expected",
    [
        ("nan", 0.5),
        ("-3", 0.5),
        ("inf", 0.5),
        ("1e400", 0.5),
        ("99999999", 30.0),
        ("soon", 0.5),
        ("2", 2.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_nan_negative_absurd_or_past(server_factory, header, expected):
    server = server_factory([("status", 429, "slow down", {"Retry-After": header})])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, backoff=0.5, max_backoff=30.0)
    assert judge.score(["p"], ["SCORE=1"]).tolist() == [1.0]
    assert sleeps == [expected]


@pytest.mark.parametrize("bad", [KEY + "\n", KEY + "\r", " " + KEY, "sk-\x07abc", "sk-é€"])
def test_a_bad_key_is_refused_up_front_without_echoing_it(monkeypatch, bad):
    monkeypatch.setenv("SPARD_TEST_JUDGE_KEY", bad)
    with pytest.raises(ValueError, match="SPARD_TEST_JUDGE_KEY") as info:
        OpenAIJudge("m", "http://127.0.0.1:9/v1", api_key_env="SPARD_TEST_JUDGE_KEY")
    assert bad.strip() not in str(info.value) and "sk-" not in str(info.value)


def test_an_echoed_key_straddling_the_truncation_is_still_scrubbed(server_factory):
    echo = "x" * 290 + KEY + "y" * 50  # the key crosses character 300
    server = server_factory([("status", 401, echo, {})])
    with pytest.raises(JudgeRequestError, match="HTTP 401") as info:
        make_judge(server).score(["p"], ["SCORE=1"])
    for cut in range(6, len(KEY) + 1):
        assert KEY[:cut] not in str(info.value)


def test_bad_key_is_not_retried_and_the_key_never_leaks(server_factory, caplog):
    echo = f'{{"error": "Incorrect API key provided: {KEY}"}}'
    server = server_factory([("status", 500, echo, {}), ("status", 401, echo, {})])
    sleeps: list[float] = []
    judge = make_judge(server, sleeps, max_workers=1)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(JudgeRequestError) as info:
            judge.score(["p"], ["SCORE=1"])
    assert "HTTP 401" in str(info.value)
    assert "***" in str(info.value)
    assert len(server.requests) == 2 and len(sleeps) == 1
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert KEY not in caplog.text
    assert "retry 1/4" in caplog.text
    assert KEY not in repr(judge) and KEY not in str(vars(judge))


def test_concurrency_is_limited_to_max_workers(server_factory):
    server = server_factory(hold_until_inflight=2, total=6)
    judge = make_judge(server, max_workers=2)
    scores = judge.score(["p"] * 6, [f"SCORE={n}" for n in (1, 2, 3, 4, 5, 1)])
    assert scores.tolist() == [1, 2, 3, 4, 5, 1]
    assert server.max_inflight == 2


def test_mismatched_lengths_and_bad_arguments_fail_early():
    judge = OpenAIJudge("m", "http://127.0.0.1:9/v1", api_key_env=None)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        judge.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="on_malformed"):
        OpenAIJudge("m", "http://127.0.0.1:9", api_key_env=None, on_malformed=0)
    with pytest.raises(ValueError, match="not an http"):
        OpenAIJudge("m", "127.0.0.1:9", api_key_env=None)
    with pytest.raises(ValueError, match="placeholder"):
        OpenAIJudge("m", "http://127.0.0.1:9", api_key_env=None, template="no slots")


@pytest.mark.parametrize(
    "base, url",
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://h/openai/v1/chat/completions", "http://h/openai/v1/chat/completions"),
    ],
)
def test_chat_url(base, url):
    assert _chat_url(base) == url
