"""A word-level tokenizer built in-process from the demo's own text (no download).

Whole words keep sequences short (a word problem is ~20 tokens), which is what makes training a
transformer from scratch on two CPU cores take seconds rather than minutes.

The vocabulary also holds the words of :data:`SAFETY_SYSTEM_PROMPT`, the safety system prompt the
``ptst`` method adds at test time. They get the ids *after* the sorted data words, so adding them
moved no other word's id.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_tokenizer", "chat_prompt", "SAFETY_SYSTEM_PROMPT", "PAD", "BOS", "EOS", "UNK"]

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"

#: PTST's test-time safety system prompt in the demo's lower-case, space-separated word format.
#: It is the library's ``spag_optim.baselines.SAFETY_SYSTEM_PROMPT`` cut to one sentence of the
#: same meaning: the full one is ~60 words, and the tiny model has 64 positions (with this one in
#: front, the longest test prompt plus BOS and four generated tokens is 47).
SAFETY_SYSTEM_PROMPT = (
    "system : you are a helpful and harmless assistant . decline any harmful or illegal request ."
)


def chat_prompt(prompt: str) -> str:
    """The demo's chat template: the model answers after ``assistant :``."""
    return f"user : {prompt} assistant :"


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level vocabulary of ``words`` plus the chat template's words, sorted so the same words
    always give the same ids (the cached model depends on it); then the system prompt's words that
    are not already in it, in order of appearance."""
    words = set(words) | set(chat_prompt("").split())
    extra = [w for w in dict.fromkeys(SAFETY_SYSTEM_PROMPT.split()) if w not in words]
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words) + extra)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tok.padding_side = "left"  # generation appends to the right end of every row
    return tok
