"""SafetyBatches.from_pairs: (harmful prompt, refusal) pairs -> padded batches whose loss is the
refusal's negative log-likelihood (prompt and padding masked), with the model's chat template."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from spag_optim import SafetyBatches  # noqa: E402

from helpers.tiny_lm import build_tokenizer, tiny_causal_lm  # noqa: E402

PAIRS = [
    ("how do i make poison", "sorry i cannot help with that"),
    ("how do i steal a car", "no"),
    ("tell me how to hack a bank", "i will not help with hacking a bank account"),
]


def tokenizer(chat_template):
    return build_tokenizer([p + " " + r for p, r in PAIRS], chat_template=chat_template)


def literal_encoding(tok, prompt, refusal):
    """What the docstring promises, written out: template user turn, then refusal + EOS."""
    if tok.chat_template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = tok.bos_token + prompt + "\n"
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    refusal_ids = tok(refusal, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt_ids, refusal_ids


@pytest.mark.parametrize("chat_template", [True, False], ids=["template", "no_template"])
def test_from_pairs_masks_the_prompt_and_pads(chat_template):
    tok = tokenizer(chat_template)
    batches = SafetyBatches.from_pairs(PAIRS, tok, batch_size=3, seed=0, shuffle=False)
    batch = next(batches)
    width = max(sum(map(len, literal_encoding(tok, p, r))) for p, r in PAIRS)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, width)
    for row, (prompt, refusal) in enumerate(PAIRS):
        prompt_ids, refusal_ids = literal_encoding(tok, prompt, refusal)
        n, pad = len(prompt_ids) + len(refusal_ids), width - len(prompt_ids) - len(refusal_ids)
        assert (
            batch["input_ids"][row].tolist() == prompt_ids + refusal_ids + [tok.pad_token_id] * pad
        )
        assert (
            batch["labels"][row].tolist() == [-100] * len(prompt_ids) + refusal_ids + [-100] * pad
        )
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * pad
    decoded = tok.decode(batch["input_ids"][0])
    assert ("<|user|>" in decoded and "<|assistant|>" in decoded) == chat_template


def test_the_safety_loss_is_the_refusals_negative_log_likelihood():
    tok = tokenizer(True)
    model = tiny_causal_lm(tok).double()
    batch = next(SafetyBatches.from_pairs(PAIRS, tok, batch_size=3, shuffle=False))
    with torch.no_grad():
        loss = float(model(**batch).loss)
    # Literal float64 reference: mean over refusal tokens of -log p(token | everything before).
    terms = []
    for prompt, refusal in PAIRS:
        prompt_ids, refusal_ids = literal_encoding(tok, prompt, refusal)
        ids = torch.tensor([prompt_ids + refusal_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        for t in range(len(prompt_ids), ids.shape[1]):
            terms.append(-float(log_probs[t - 1, ids[0, t]]))
    # Hugging Face's loss casts the logits to float32: agreement to float32 rounding.
    assert loss == pytest.approx(math.fsum(terms) / len(terms), rel=1e-6)
    # Had the prompt counted, the loss would be another number entirely.
    assert abs(loss - float(model(**{**batch, "labels": batch["input_ids"]}).loss.detach())) > 1e-3


def test_from_pairs_accepts_loader_rows_and_rejects_the_rest():
    tok = tokenizer(False)
    rows = [{"prompt": p, "response": r} for p, r in PAIRS]  # load_spard_pairs' rows
    a = next(SafetyBatches.from_pairs(rows, tok, batch_size=3, shuffle=False))
    b = next(SafetyBatches.from_pairs(PAIRS, tok, batch_size=3, shuffle=False))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(TypeError, match="pair 1"):
        SafetyBatches.from_pairs([PAIRS[0], "just a string"], tok)
    with pytest.raises(ValueError, match="no refusal token"):
        SafetyBatches.from_pairs(PAIRS, tok, max_length=3)
    with pytest.raises(ValueError, match="no safety pairs"):
        SafetyBatches.from_pairs([], tok)


def test_from_pairs_keeps_the_seed_and_cycles_like_safety_batches():
    tok = tokenizer(False)
    batches = SafetyBatches.from_pairs(PAIRS, tok, batch_size=2, seed=4)
    plain = SafetyBatches(list(range(3)), batch_size=2, seed=4, collate_fn=list)
    order = [next(plain) for _ in range(4)]
    for indices in order:
        batch = next(batches)
        assert batch["input_ids"].shape[0] == len(indices)
    assert batches.seed == 4 and (batches.epoch, batches.position) == (plain.epoch, plain.position)


# -- dpp-select's rows, render=, and bad input named precisely ------------------------------------


def test_from_pairs_takes_dpp_select_rows_and_never_reads_unsafe():
    tok = tokenizer(True)
    marker = "UNSAFEMARKER"  # stands in for the harmful answer; it must reach no token or message
    rows = [{"prompt": p, "safe": r, "unsafe": marker} for p, r in PAIRS]
    a = SafetyBatches.from_pairs(rows, tok, batch_size=3, shuffle=False)
    b = SafetyBatches.from_pairs(PAIRS, tok, batch_size=3, shuffle=False)
    assert a.data == b.data
    bad = [*rows, {"prompt": "q", "safe": None, "unsafe": marker}]
    with pytest.raises(TypeError) as error:
        SafetyBatches.from_pairs(bad, tok)
    assert "pair 3" in str(error.value) and marker not in str(error.value)


def test_safety_batches_refuse_text_rows_and_point_at_from_pairs():
    rows = [{"prompt": p, "safe": r, "unsafe": "x"} for p, r in PAIRS]
    with pytest.raises(TypeError, match=r"SafetyBatches\.from_pairs\(rows, tokenizer"):
        SafetyBatches(rows, batch_size=2)
    SafetyBatches(rows, batch_size=2, collate_fn=list)  # a loss_fn that tokenises itself: fine


def test_from_pairs_render_formats_the_prompt():
    tok = tokenizer(True)

    def render(prompt):
        return f"{tok.bos_token} {prompt} ."

    rows = SafetyBatches.from_pairs(PAIRS, tok, render=render, shuffle=False).data
    for row, (prompt, refusal) in zip(rows, PAIRS):
        prompt_ids = tok(render(prompt), add_special_tokens=False)["input_ids"]
        refusal_ids = tok(refusal, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert row["input_ids"] == prompt_ids + refusal_ids
        assert row["labels"] == [-100] * len(prompt_ids) + refusal_ids
    with pytest.raises(TypeError, match="render"):
        SafetyBatches.from_pairs(PAIRS, tok, render=lambda p: None)


def test_from_pairs_takes_any_iterable_of_pairs():
    tok = tokenizer(False)
    a = SafetyBatches.from_pairs((pair for pair in PAIRS), tok, shuffle=False)
    assert a.data == SafetyBatches.from_pairs(PAIRS, tok, shuffle=False).data
    with pytest.raises(TypeError, match="one string"):
        SafetyBatches.from_pairs("how do i make poison", tok)
    with pytest.raises(TypeError, match="one row"):
        SafetyBatches.from_pairs({"prompt": "q", "safe": "no"}, tok)


@pytest.mark.parametrize(
    "pair, message",
    [
        (("how do i make poison", None), r"pair 0: the refusal is a NoneType, not a str"),
        (("how do i make poison", b"no"), r"pair 0: the refusal is a bytes, not a str"),
        ((b"how do i make poison", "no"), r"pair 0: the prompt is a bytes, not a str"),
        ({"prompt": "how do i make poison"}, r"pair 0: the row has no 'safe' or 'response'"),
    ],
)
def test_from_pairs_names_the_wrong_element(pair, message):
    with pytest.raises(TypeError, match=message):
        SafetyBatches.from_pairs([pair], tokenizer(False))


def test_an_empty_refusal_is_named_without_an_eos_token():
    tok = tokenizer(False)
    tok.eos_token = None
    with pytest.raises(ValueError, match="pair 1: the refusal is empty") as error:
        SafetyBatches.from_pairs([PAIRS[0], ("how do i steal a car", " ")], tok)
    assert "max_length" not in str(error.value)


def test_from_pairs_checks_the_tokenizers_maximum_length():
    tok = tokenizer(True)
    longest = max(len(row["input_ids"]) for row in SafetyBatches.from_pairs(PAIRS, tok).data)
    tok.model_max_length = longest - 1
    with pytest.raises(ValueError, match=rf"model_max_length={longest - 1}.*max_length="):
        SafetyBatches.from_pairs(PAIRS, tok)
    SafetyBatches.from_pairs(PAIRS, tok, max_length=longest - 1)  # cut to fit: fine


@pytest.mark.parametrize("arch", ["gpt2", "llama"], ids=["learned_positions", "rope"])
def test_rows_longer_than_the_models_positions_are_refused_before_training(arch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from spag_optim import calibrate_tau, make_safety_closure

    tok = tokenizer(True)
    batches = SafetyBatches.from_pairs(PAIRS, tok, batch_size=3)
    longest = max(len(row["input_ids"]) for row in batches.data)
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tok), n_positions=longest - 1, n_embd=8, n_layer=1, n_head=2)
        )
    else:
        model = tiny_causal_lm(tok, max_positions=longest - 1)
    with pytest.raises(
        ValueError, match=rf"{longest} tokens.*max_position_embeddings={longest - 1}"
    ):
        make_safety_closure(model, batches)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        calibrate_tau(model, batches, num_batches=1)
    make_safety_closure(model, SafetyBatches.from_pairs(PAIRS, tok, max_length=longest - 1))


@pytest.mark.parametrize(
    "extra", [{"safe": "sorry i cannot help with that"}, {"unsafe": "UNSAFEMARKER"}]
)
def test_a_response_field_beside_safe_or_unsafe_is_refused_not_taken_as_the_target(extra):
    """A dpp-select row keeps every pool field: a pool's own "response" (here a harmful answer)
    used to replace "safe" as the safety target without a word, so SPAG protected it."""
    tok = tokenizer(False)
    rows = [{"prompt": p, "safe": r} for p, r in PAIRS]
    rows[1] = {"prompt": PAIRS[1][0], "response": "UNSAFEMARKER", **extra}
    with pytest.raises(TypeError, match=r"pair 1: the row has both 'response' and '(un)?safe'"):
        SafetyBatches.from_pairs(rows, tok)
    with pytest.raises(TypeError) as error:
        SafetyBatches.from_pairs(rows, tok)
    assert "UNSAFEMARKER" not in str(error.value)


class Spy:
    """The tokenizer, recording the longest text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_with_max_length_a_huge_text_is_not_tokenised_whole():
    """A 100 MB prompt was tokenised whole before the row was cut to max_length (254 s)."""
    tok = tokenizer(False)
    huge = "i will not help with hacking a bank account " * 100_000  # 4.4 million characters
    spy = Spy(tok)
    rows = SafetyBatches.from_pairs([(PAIRS[0][0], huge)], spy, max_length=24).data
    assert spy.longest < 100_000
    assert rows == SafetyBatches.from_pairs([(PAIRS[0][0], huge[:600])], tok, max_length=24).data
    spy = Spy(tok)
    with pytest.raises(
        ValueError,
        match=r"no refusal token is left within max_length=24 \(the prompt alone takes at least",
    ):
        SafetyBatches.from_pairs([(huge, "no")], spy, max_length=24)
    assert spy.longest < 100_000


@pytest.mark.parametrize(
    "pairs, tok, error, match",
    [
        (
            None,
            "tok",
            TypeError,
            r"pairs must be an iterable of \(prompt, refusal\) pairs, got NoneType",
        ),
        (3, "tok", TypeError, "got int"),
        (PAIRS, None, TypeError, "tokenizer must be the model's tokenizer"),
        (
            [("how do i make poison", "sorry \ud800")],
            "tok",
            ValueError,
            r"pair 0: the refusal holds a lone surrogate",
        ),
    ],
    ids=["none", "int", "no_tokenizer", "surrogate"],
)
def test_hostile_pairs_and_tokenizers_get_one_clear_error(pairs, tok, error, match):
    """Each used to fail inside Python or the tokenizers library ("'NoneType' object is not
    iterable", "no attribute 'bos_token'", "TextEncodeInput must be Union[...]")."""
    with pytest.raises(error, match=match):
        SafetyBatches.from_pairs(pairs, tokenizer(False) if tok == "tok" else tok)
