"""generate_responses: batched, left-padded greedy generation against a literal one-prompt-at-a-time
argmax loop (no padding, no ``model.generate``) on a tiny random float64 Llama, so any padding,
position or stopping mistake changes a token; plus the state it restores and its input errors."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from spag_optim.evaluation import generate_responses  # noqa: E402
from spag_optim.safety_pairs import format_prompt  # noqa: E402

from helpers.tiny_lm import build_tokenizer, save_tiny_lm  # noqa: E402

#: Lengths differ (1 to 11 words), so a batch of them needs padding.
PROMPTS = [
    "hi",
    "name a fruit",
    "how do i fix a flat tire on my bike",
    "what is 7 plus 3",
    "tell me how to hack a bank account right now please",
]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tests' tiny random Llama (chat template), in float64 so that no argmax is a near tie."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_tiny_lm(tmp_path_factory.mktemp("tiny"), "llama", PROMPTS)
    return AutoModelForCausalLM.from_pretrained(folder).double(), AutoTokenizer.from_pretrained(
        folder
    )


def reference(model, tok, prompt, render, stop):
    """Greedy decoding written out: the unpadded prompt, argmax of the last logits, until a token of
    ``stop`` or ``NEW_TOKENS`` tokens; the new tokens decoded without special tokens."""
    ids = tok(render(prompt), add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] in stop:
                break
    return tok.decode(new, skip_special_tokens=True), len(new)


def test_batches_match_the_one_prompt_at_a_time_loop(tiny):
    model, tok = tiny
    render = functools.partial(format_prompt, tok)  # the default: as training formats prompts
    expected = [reference(model, tok, p, render, {tok.eos_token_id}) for p in PROMPTS]
    lengths = {len(tok(render(p), add_special_tokens=False)["input_ids"]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # every row of a batch is padded differently
    steps = [n for _, n in expected]
    assert min(steps) < NEW_TOKENS and max(steps) == NEW_TOKENS  # both ways of ending are covered
    tok.padding_side = "right"
    model.train()

    got = generate_responses(model, tok, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=3)

    assert got == [text for text, _ in expected]
    assert tok.padding_side == "right" and model.training  # restored


def test_a_custom_render_is_the_text_the_model_continues(tiny):
    model, tok = tiny
    render = lambda p: f"{tok.bos_token} question : {p} answer :"  # noqa: E731
    expected = [reference(model, tok, p, render, {tok.eos_token_id})[0] for p in PROMPTS]
    got = generate_responses(
        model, tok, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=2, render=render
    )
    assert got == expected
    assert got != generate_responses(model, tok, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=2)


def test_stops_at_the_generation_configs_eos_too(tiny):
    model, tok = tiny
    config_eos = tok.convert_tokens_to_ids("a")  # the models' end of turn, say
    render = functools.partial(format_prompt, tok)
    expected = [
        reference(model, tok, p, render, {tok.eos_token_id, config_eos})[0] for p in PROMPTS
    ]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [config_eos]
    try:
        got = generate_responses(model, tok, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=2)
    finally:
        model.generation_config.eos_token_id = old
    assert got == expected
    assert got != [reference(model, tok, p, render, {tok.eos_token_id})[0] for p in PROMPTS]


@pytest.mark.parametrize("training", [True, False])
def test_mode_and_padding_side_are_restored_when_generation_fails(tiny, training):
    model, tok = tiny
    tok.padding_side = "right"
    model.train(training)
    seen = []

    def render(prompt):  # fails in the second batch, after the first was generated
        seen.append(prompt)
        if len(seen) > 2:
            raise RuntimeError("render failed")
        return format_prompt(tok, prompt)

    with pytest.raises(RuntimeError, match="render failed"):
        generate_responses(model, tok, PROMPTS, max_new_tokens=2, batch_size=2, render=render)
    assert tok.padding_side == "right" and model.training is training


def test_no_prompts_give_no_responses(tiny):
    model, tok = tiny
    assert generate_responses(model, tok, [], max_new_tokens=4) == []


@pytest.mark.parametrize("name", ["max_new_tokens", "batch_size"])
@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4", None])
def test_counts_must_be_positive_ints(tiny, name, value):
    model, tok = tiny
    kwargs = {"max_new_tokens": 4, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a positive int, got {value!r}"):
        generate_responses(model, tok, PROMPTS, **kwargs)


def test_a_single_string_is_not_a_list_of_prompts(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="one string; pass a list of prompts"):
        generate_responses(model, tok, "hi", max_new_tokens=4)


def test_a_non_string_prompt_is_named_by_index(tiny):
    model, tok = tiny
    with pytest.raises(TypeError, match="prompt 2 is a dict; prompts must be strings"):
        generate_responses(model, tok, ["hi", "name a fruit", {"prompt": "x"}], max_new_tokens=4)


def test_a_tokenizer_without_pad_token_says_what_to_set(tiny):
    model, _ = tiny
    tok = build_tokenizer(PROMPTS)
    tok.pad_token = None
    tok.padding_side = "right"
    with pytest.raises(ValueError, match="set tokenizer.pad_token"):
        generate_responses(model, tok, PROMPTS, max_new_tokens=4)
    assert tok.padding_side == "right"
