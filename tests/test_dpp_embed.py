"""embed_texts against a literal one-text-at-a-time loop on a tiny in-process Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpp_select import embed_texts

from helpers.dpp_tiny_model import tiny_model, tiny_tokenizer

TEXTS = [
    "how do i bake bread",
    "two plus three equals five",
    "help",
    "what is the answer please",
    "refuse",
    "make a cake",
    "the safe answer is five",
    "question",
]


def _literal(texts, model, tokenizer, max_length):
    out = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0]
        out.append(hidden.mean(dim=0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_mean_pooling_equals_per_text_loop(batch_size):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    got = embed_texts(TEXTS, model, tokenizer, batch_size=batch_size, max_length=4, progress=False)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, _literal(TEXTS, model, tokenizer, 4), atol=1e-5)
    assert not model.training


def test_duck_typed_sentence_transformer_and_errors():
    class Encoder:
        def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
            return np.array([[len(t), 1.0] for t in texts])

    got = embed_texts(["ab", "abc"], Encoder(), progress=False)
    np.testing.assert_array_equal(got, [[2, 1], [3, 1]])
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match="no texts"):
        embed_texts([], tiny_model(), tiny_tokenizer())
    with pytest.raises(ValueError, match=r"texts \[1\] produce no tokens"):
        embed_texts(["help", ""], tiny_model(), tiny_tokenizer(), progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        embed_texts(["help"], tiny_model())


class Spy:
    """The tokenizer, recording the longest text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        batch = [texts] if isinstance(texts, str) else texts
        self.longest = max([self.longest, *map(len, batch)])
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_huge_text_is_not_tokenised_whole_to_keep_its_first_tokens():
    """A 100 MB prompt was tokenised whole before truncation to max_length (254 s)."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    huge = "how do i bake bread " * 200_000  # 4 million characters
    spy = Spy(tokenizer)
    got = embed_texts([huge, "help"], model, spy, max_length=8, progress=False)
    assert spy.longest < 100_000
    np.testing.assert_array_equal(
        got, embed_texts([huge[:400], "help"], model, tokenizer, max_length=8, progress=False)
    )


def test_one_string_instead_of_a_list_is_named():
    """A string was embedded character by character, then refused for its spaces."""
    with pytest.raises(TypeError, match="one string"):
        embed_texts("how do i bake bread", tiny_model(), tiny_tokenizer(), progress=False)
