"""Tokenising only as much of a text as a cut to N tokens keeps.

Cutting a text to N tokens (``truncation=True, max_length=N``, or a row cut on the right) first
tokenises the whole text: a 100 MB prompt took minutes to keep 512 tokens. :func:`token_prefix`
gives a prefix of a bounded number of characters whose first N tokens are the whole text's.
Tokenizers split text into pre-tokens (words, punctuation, runs of spaces) and tokenise each on its
own, so a cut many tokens after the N-th cannot change the first N: the prefix must hold at least
N + :data:`MARGIN` tokens, tried at :data:`CHARS_PER_TOKEN` characters a token and four times as
many each time it falls short (long tokens, text the normaliser drops), else the whole text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHARS_PER_TOKEN", "MARGIN", "token_prefix"]

#: Characters a token is first assumed to take at most.
CHARS_PER_TOKEN = 32
#: Tokens beyond the N kept that the prefix must hold, so that its cut cannot reach them.
MARGIN = 64


def token_prefix(tokenizer: Any, text: str, tokens: int) -> str:
    """A prefix of ``text`` whose first ``tokens`` tokens under ``tokenizer`` are those of the
    whole ``text`` (``text`` itself when it is short), read in bounded pieces."""
    limit = CHARS_PER_TOKEN * (tokens + MARGIN)
    while limit < len(text):
        prefix = text[:limit]
        if len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) >= tokens + MARGIN:
            return prefix
        limit *= 4
    return text
