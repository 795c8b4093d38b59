"""Tiny random causal LMs saved to a folder, built in-process (no downloads), for end-to-end tests.

The tokenizer is word-level with a small chat template, so the examples exercise the same code path
as with a real instruct model: ``apply_chat_template``, special tokens, EOS, padding.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Iterable

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
_WORD = re.compile(r"\w+|[^\w\s]+")


def build_tokenizer(texts: Iterable[str], max_words: int = 2000, chat_template: bool = True):
    """A word-level ``PreTrainedTokenizerFast`` over the most frequent words of ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = collections.Counter(w for t in texts for w in _WORD.findall(t))
    words = [w for w, _ in counts.most_common(max_words)]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [str(d) for d in range(10)])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_lm(folder: str | os.PathLike, arch: str, texts: Iterable[str], seed: int = 0,
                 chat_template: bool = True) -> str:
    """Save a 2-layer random ``arch`` ("llama" or "qwen2") model and its tokenizer to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(texts, chat_template=chat_template)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown arch {arch!r}; use 'llama' or 'qwen2'")
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
