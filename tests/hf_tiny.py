"""A tiny random Llama, its word-level tokenizer and chat-like data, built in-process (no downloads)."""

from __future__ import annotations

import torch

from tiny_lm import build_tokenizer

UTILITY_TEXTS = [
    f"<|user|> name a {kind} <|end|> <|assistant|> {answer} <|end|>"
    for kind, answer in [
        ("fruit", "apple"), ("color", "blue"), ("animal", "cat"), ("number", "7"),
        ("fruit", "pear"), ("color", "red"), ("animal", "dog"), ("number", "3"),
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


def tiny_llama(tok, seed: int = 0, *, hidden: int = 16, intermediate: int = 32, layers: int = 1,
               heads: int = 2, kv_heads: int = 1):
    """A random Llama sized for ``tok`` (weights drawn from ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tokenized(tok, texts):
    return [{"input_ids": tok(text)["input_ids"]} for text in texts]
