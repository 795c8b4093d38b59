"""The embedding and CLI tests' tiny Llama and its word-level tokenizer, over a fixed word list."""

from __future__ import annotations

from helpers.tiny_lm import tiny_causal_lm, word_tokenizer

WORDS = (
    "the a how do i make bake bread cake safe help refuse answer math two plus three "
    "equals five question what is please"
).split()


def tiny_tokenizer():
    return word_tokenizer(WORDS, {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]"})


def tiny_model(seed: int = 0):
    return tiny_causal_lm(
        tiny_tokenizer(), seed, hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2
    ).eval()
