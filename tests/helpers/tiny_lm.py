"""Tiny random causal LMs and word-level tokenizers, built in-process (no downloads), for tests.

``word_tokenizer`` and ``tiny_causal_lm`` are the only builders; the rest are presets over them.
``build_tokenizer`` has a small chat template, so the examples exercise the same code path as with a
real instruct model: ``apply_chat_template``, special tokens, EOS, padding.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterable, Mapping

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
_WORD = re.compile(r"\w+|[^\w\s]+")


def word_tokenizer(
    words: Iterable[str],
    special: Mapping[str, str],
    *,
    extra_special=(),
    chat_template: str | None = None,
    cls_sep: bool = False,
):
    """A whitespace-split, word-level ``PreTrainedTokenizerFast``.

    Ids count up from 0 through ``special``'s tokens (role such as ``"pad_token"`` -> token, in that
    order), then ``extra_special``, then ``words`` (repeats keep their first id). ``cls_sep`` wraps
    inputs BERT-style: ``cls a sep`` and ``cls a sep b sep``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*special.values(), *extra_special, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if cls_sep:
        cls, sep = special["cls_token"], special["sep_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    kwargs = {"additional_special_tokens": list(extra_special)} if extra_special else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special, **kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tokenizer(texts: Iterable[str], max_words: int = 2000, chat_template: bool = True):
    """A chat-style ``word_tokenizer`` over the digits and the most frequent words of ``texts``."""
    counts = collections.Counter(w for t in texts for w in _WORD.findall(t))
    words = [str(d) for d in range(10)] + [w for w, _ in counts.most_common(max_words)]
    roles = dict(zip(["unk_token", "pad_token", "bos_token", "eos_token"], SPECIAL_TOKENS))
    return word_tokenizer(
        words,
        roles,
        extra_special=SPECIAL_TOKENS[4:],
        chat_template=CHAT_TEMPLATE if chat_template else None,
    )


def tiny_causal_lm(
    vocab,
    seed: int = 0,
    *,
    arch: str = "llama",
    hidden: int = 16,
    intermediate: int = 32,
    layers: int = 1,
    heads: int = 2,
    kv_heads: int = 1,
    max_positions: int = 64,
):
    """A random ``arch`` ("llama" or "qwen2") causal LM, weights drawn from ``seed``.

    ``vocab`` is a vocabulary size, or a tokenizer whose size and BOS/EOS/PAD ids the config takes.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}; use 'llama' or 'qwen2'")
    config_class, model_class = classes[arch]
    ids = (
        {}
        if isinstance(vocab, int)
        else dict(
            bos_token_id=vocab.bos_token_id,
            eos_token_id=vocab.eos_token_id,
            pad_token_id=vocab.pad_token_id,
        )
    )
    config = config_class(
        vocab_size=vocab if isinstance(vocab, int) else len(vocab),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        **ids,
    )
    torch.manual_seed(seed)
    return model_class(config)


def save_tiny_lm(
    folder: str | os.PathLike,
    arch: str,
    texts: Iterable[str],
    seed: int = 0,
    chat_template: bool = True,
) -> str:
    """Save a 2-layer random ``arch`` ("llama" or "qwen2") model and its tokenizer to ``folder``."""
    tokenizer = build_tokenizer(texts, chat_template=chat_template)
    model = tiny_causal_lm(
        tokenizer,
        seed,
        arch=arch,
        hidden=32,
        intermediate=64,
        layers=2,
        heads=4,
        kv_heads=2,
        max_positions=512,
    )
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
