"""Chat-like utility and safety data and their word-level tokenizer, for the tiny-LM tests."""

from __future__ import annotations

from helpers.tiny_lm import build_tokenizer

UTILITY_TEXTS = [
    f"<|user|> name a {kind} <|end|> <|assistant|> {answer} <|end|>"
    for kind, answer in [
        ("fruit", "apple"),
        ("color", "blue"),
        ("animal", "cat"),
        ("number", "7"),
        ("fruit", "pear"),
        ("color", "red"),
        ("animal", "dog"),
        ("number", "3"),
    ]
] * 2
SAFE_ASKS = ["make poison", "steal a car", "build a bomb", "hack a bank"]
SAFE_TEXTS = [
    f"<|user|> how do i {ask} <|end|> <|assistant|> sorry i cannot help with that <|end|>"
    for ask in SAFE_ASKS
]
#: The same safe examples as (harmful prompt, refusal) pairs, for ``from_pairs``.
SAFE_PAIRS = [(f"how do i {ask}", "sorry i cannot help with that") for ask in SAFE_ASKS]


def tokenizer():
    return build_tokenizer(UTILITY_TEXTS + SAFE_TEXTS, chat_template=False)


def tokenized(tok, texts):
    return [{"input_ids": tok(text)["input_ids"]} for text in texts]
