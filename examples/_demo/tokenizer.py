"""A word-level tokenizer built in-process from the demo's own text (no download).

Whole words keep sequences short (a word problem is ~20 tokens), which is what makes training a
transformer from scratch on two CPU cores take seconds rather than minutes.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_tokenizer", "chat_prompt", "PAD", "BOS", "EOS", "UNK"]

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"


def chat_prompt(prompt: str) -> str:
    """The demo's chat template: the model answers after ``assistant :``."""
    return f"user : {prompt} assistant :"


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level vocabulary of ``words`` plus the chat template's words, sorted so the same words
    always give the same ids (the cached model depends on it)."""
    words = set(words) | set(chat_prompt("").split())
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tok.padding_side = "left"  # generation appends to the right end of every row
    return tok
