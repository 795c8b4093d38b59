"""An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

This is the judge the SPARD paper uses (GPT-4o-mini with the Qi et al. 2024 rubric). It talks
HTTP through the standard library (``_http.post``) so the library needs no client package, and it
works the same with OpenAI, Azure-style gateways or a local vLLM / llama.cpp server.

The API key is read from an environment variable (checked once at construction, without echoing
it) and only ever placed in the ``Authorization`` header of requests to ``base_url`` itself:
redirects are never followed, so the key never travels to another address. It is never logged,
never stored on the object, and scrubbed from any error text a server echoes back (before that
text is truncated).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np

from .._caller_warning import warn_at_caller
from ..warnings import MalformedJudgeReplyWarning
from ._http import BodyTooLarge, DeadlineExceeded, post
from .judges import Judge
from .rubric import HARMFULNESS_RUBRIC, MalformedVerdictError, parse_score, render_rubric

__all__ = ["OpenAIJudge", "JudgeRequestError"]

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying: rate limits, server errors and gateway hiccups.
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Characters of a server's error text shown in an exception (after the key is scrubbed).
_DETAIL_CHARS = 300


class JudgeRequestError(RuntimeError):
    """The judge endpoint could not be used (after retries where retrying made sense)."""


def _check_key(name: str, key: str | None) -> str:
    """The key in ``$name``, or an error that says what is wrong with it without showing it."""
    if not key:
        raise ValueError(
            f"environment variable {name} is not set; export the API key there, or pass "
            "api_key_env=None for a server that needs no key"
        )
    if key != key.strip() or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ValueError(
            f"the API key in {name} holds whitespace or control characters (often a trailing "
            "newline from a file); export it without them"
        )
    if not key.isascii():
        raise ValueError(
            f"the API key in {name} holds non-ASCII characters, which no API key has; check "
            "that the variable holds the key"
        )
    return key


def _chat_url(base_url: str) -> str:
    """``https://host/v1`` -> ``https://host/v1/chat/completions``; a bare host gets ``/v1``."""
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(
            f"base_url {base_url!r} is not an http(s) URL; pass e.g. "
            "'https://api.openai.com/v1' or 'http://127.0.0.1:8000/v1'"
        )
    path = parsed.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return base_url
    if not path:
        path = "/v1"
    return urllib.parse.urlunparse(parsed._replace(path=path + "/chat/completions"))


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or ``None``
    when it is absent, negative, not finite or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
        seconds = max(seconds, 0.0)  # a date already past: retry now
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class OpenAIJudge(Judge):
    """Harmfulness judge that asks a chat model to apply the 1-5 rubric.

    Args:
        model: model name sent in the request (the paper uses ``"gpt-4o-mini"``).
        base_url: API root, e.g. ``"https://api.openai.com/v1"``; ``/chat/completions`` is
            appended (and ``/v1`` first when the URL has no path).
        api_key_env: name of the environment variable holding the key; ``None`` sends no
            ``Authorization`` header (local servers). A named but unset variable is an error.
        timeout: total seconds per HTTP request (connecting, sending and reading the whole
            reply): a server that trickles its reply is cut off too.
        max_retries: extra attempts after a timeout, a connection error (refused, reset,
            dropped mid-reply) or a retryable status
            (408, 409, 429, 5xx). Other 4xx statuses fail at once: retrying a bad key is useless.
        backoff: first retry delay in seconds, doubled per attempt up to ``max_backoff``; a
            ``Retry-After`` header (seconds or an HTTP date) takes precedence, capped at
            ``max_backoff``; a negative, non-finite or unreadable one is ignored.
        max_response_bytes: largest reply body read; a larger one is an error.
        max_workers: requests in flight at once (a thread pool; the work is network-bound).
        on_malformed: ``"raise"`` (default) raises :class:`MalformedVerdictError` for a reply
            without a valid ``#thescore`` line; a number in [1, 5] is used as that reply's score
            instead, with a warning, and the indices are kept in :attr:`last_malformed`.
            Only well-formed chat completions without a score line are malformed: a reply that
            is not JSON or not a chat completion raises :class:`JudgeRequestError` either way.
        template: rubric with ``{instruction}`` and ``{response}`` placeholders.
        sleep: the delay function; tests inject a recorder so they never wait.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_workers: int = 8,
        max_response_bytes: int = 1 << 20,
        on_malformed: str | float = "raise",
        temperature: float = 0.0,
        max_tokens: int = 1024,
        template: str = HARMFULNESS_RUBRIC,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not model:
            raise ValueError("OpenAIJudge needs a model name, e.g. model='gpt-4o-mini'")
        self.url = _chat_url(base_url)
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number > 0 seconds, got {timeout}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0 seconds")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if on_malformed != "raise":
            if isinstance(on_malformed, str) or not 1.0 <= float(on_malformed) <= 5.0:
                raise ValueError(
                    f"on_malformed must be 'raise' or a fallback score in [1, 5], "
                    f"got {on_malformed!r}"
                )
        if api_key_env is not None:
            _check_key(api_key_env, os.environ.get(api_key_env))
        render_rubric("", "", template)  # fail now, not on the first request
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_workers = int(max_workers)
        self.max_response_bytes = int(max_response_bytes)
        self.on_malformed = on_malformed
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.template = template
        self.sleep = sleep
        self.last_malformed: list[int] = []

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(model={self.model!r}, url={self.url!r}, api_key_env={self.api_key_env!r})"
        )

    # -- one request -------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        try:
            return _check_key(self.api_key_env, os.environ.get(self.api_key_env))
        except ValueError as err:
            raise JudgeRequestError(f"{err} (it changed after the judge was built)") from None

    def _scrub(self, text: str, key: str | None) -> str:
        """Remove the key from server text, then truncate (so no partial key survives)."""
        text = text.replace(key, "***") if key else text
        return text[:_DETAIL_CHARS]

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before retry ``attempt + 1``: ``Retry-After`` if usable, else the backoff."""
        wait = _retry_after_seconds(retry_after)
        if wait is None:
            wait = self.backoff * (2.0**attempt)
        return min(wait, self.max_backoff)

    def verdict(self, instruction: str, response: str) -> str:
        """The judge model's raw reply for one pair, after retries."""
        key = self._api_key()
        body, headers = self._request(instruction, response, key)
        for attempt in range(self.max_retries + 1):
            retry_after: str | None = None
            try:
                reply = post(
                    self.url, body, headers, timeout=self.timeout, max_bytes=self.max_response_bytes
                )
            except DeadlineExceeded:
                reason = f"timed out after {self.timeout:g}s"
            except BodyTooLarge:
                raise JudgeRequestError(
                    f"judge endpoint {self.url} sent a reply larger than "
                    f"{self.max_response_bytes} bytes (max_response_bytes); is it a chat "
                    "completions endpoint?"
                ) from None
            except (OSError, http.client.HTTPException) as err:
                reason = self._scrub(f"connection failed ({type(err).__name__}: {err})", key)
            else:
                if 200 <= reply.status < 300:
                    return self._content(reply.body, key)
                detail = self._scrub(reply.body.decode("utf-8", "replace"), key)
                if 300 <= reply.status < 400:
                    location = self._scrub(reply.headers.get("Location", "(none)"), key)
                    raise JudgeRequestError(
                        f"judge endpoint {self.url} answered HTTP {reply.status} redirecting to "
                        f"{location}; redirects are not followed, so the API key is never sent "
                        "to another address: set base_url to the final address"
                    )
                if reply.status not in _RETRY_STATUSES:
                    raise JudgeRequestError(
                        f"judge endpoint {self.url} answered HTTP {reply.status}: {detail}"
                    )
                reason = f"HTTP {reply.status}"
                retry_after = reply.headers.get("Retry-After")
            if attempt == self.max_retries:
                raise JudgeRequestError(
                    f"judge endpoint {self.url}: {reason}; gave up after "
                    f"{self.max_retries + 1} attempts (raise timeout or max_retries)"
                )
            delay = self._delay(attempt, retry_after)
            logger.warning(
                "judge request %s; retry %d/%d in %.1fs",
                reason,
                attempt + 1,
                self.max_retries,
                delay,
            )
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, instruction: str, response: str, key: str | None) -> tuple[bytes, dict]:
        """The chat-completions body and headers for one pair (the key only as a bearer token)."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [
                    {"role": "user", "content": render_rubric(instruction, response, self.template)}
                ],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return body, headers

    def _content(self, raw: bytes, key: str | None) -> str:
        """The message text of a chat completion; anything else is a broken endpoint."""
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            start = self._scrub(raw[:200].decode("utf-8", "replace"), key)
            raise JudgeRequestError(
                f"judge endpoint {self.url} answered 200 with a body that is not JSON "
                f"(starts {start!r}); is base_url an OpenAI-compatible API?"
            ) from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            shown = self._scrub(json.dumps(payload)[:200], key)
            raise JudgeRequestError(
                f"judge endpoint {self.url} answered 200 without choices[0].message.content "
                f"({shown}); is it an OpenAI-compatible chat completions endpoint?"
            ) from None
        if not isinstance(content, str):
            raise JudgeRequestError(
                f"judge endpoint {self.url} returned a non-text message content "
                f"({type(content).__name__})"
            )
        return content

    # -- many requests -----------------------------------------------------------------------

    def _score_one(self, index: int, instruction: str, response: str) -> tuple[float, bool]:
        try:
            return parse_score(self.verdict(instruction, response)), False
        except MalformedVerdictError as err:
            if self.on_malformed == "raise":
                raise MalformedVerdictError(
                    f"response {index}: {err}; pass on_malformed=<score> to use a fallback"
                ) from None
            return float(self.on_malformed), True

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Score every pair, ``max_workers`` requests at a time, in input order.

        The first failing request (after its retries) raises and the remaining queued requests
        are cancelled: a partial score vector would bias ASR towards whichever calls succeeded.
        """
        self._check_pairs(prompts, responses)
        scores = np.empty(len(prompts), dtype=np.float64)
        malformed: list[int] = []
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [
                pool.submit(self._score_one, i, p, r)
                for i, (p, r) in enumerate(zip(prompts, responses))
            ]
            try:
                for i, future in enumerate(futures):
                    scores[i], was_malformed = future.result()
                    if was_malformed:
                        malformed.append(i)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        self.last_malformed = malformed
        if malformed:
            warn_at_caller(
                f"{len(malformed)} of {len(prompts)} judge replies had no valid '#thescore' line; "
                f"scored them {self.on_malformed:g} (indices in last_malformed)",
                MalformedJudgeReplyWarning,
            )
        return scores
