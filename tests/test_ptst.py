"""PTST prompt templates: no safety system prompt in training, present at inference."""

import pytest

from spag_optim.baselines import PLAIN_TEMPLATE, SAFETY_SYSTEM_PROMPT, PTSTPrompts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    pytest.importorskip("transformers")
    from helpers.tiny_lm import word_tokenizer

    return word_tokenizer([], {"unk_token": "[UNK]"}, chat_template=CHAT_TEMPLATE)


def test_plain_format():
    ptst = PTSTPrompts()
    assert ptst.train_prompt("Add 2 and 3.") == PLAIN_TEMPLATE.replace("{prompt}", "Add 2 and 3.")
    assert ptst.train_text("Add 2 and 3.", "5") == ptst.train_prompt("Add 2 and 3.") + "5"
    assert ptst.eval_prompt("Add 2 and 3.") == (
        SAFETY_SYSTEM_PROMPT + "\n\n" + ptst.train_prompt("Add 2 and 3.")
    )
    assert SAFETY_SYSTEM_PROMPT not in ptst.train_text("x", "y")


def test_chat_template_puts_the_safety_prompt_in_a_system_message_at_inference_only(chat_tokenizer):
    ptst = PTSTPrompts(chat_tokenizer, system_prompt="BE SAFE")
    assert ptst.train_prompt("hi") == "<|user|>hi<|end|><|assistant|>"
    assert ptst.train_text("hi", "hello") == "<|user|>hi<|end|><|assistant|>hello<|end|>"
    assert ptst.eval_prompt("hi") == "<|system|>BE SAFE<|end|><|user|>hi<|end|><|assistant|>"


def test_optional_training_system_prompt(chat_tokenizer):
    ptst = PTSTPrompts(chat_tokenizer, system_prompt="BE SAFE", train_system_prompt="BE BRIEF")
    assert ptst.train_prompt("hi").startswith("<|system|>BE BRIEF<|end|>")
    assert "BE SAFE" not in ptst.train_text("hi", "yo")


def test_bad_configuration_fails_clearly(chat_tokenizer):
    with pytest.raises(ValueError, match="'{prompt}' slot"):
        PTSTPrompts(template="no slot")
    with pytest.raises(ValueError, match="system_prompt is empty"):
        PTSTPrompts(system_prompt="")
    chat_tokenizer.chat_template, saved = None, chat_tokenizer.chat_template
    try:
        with pytest.raises(ValueError, match="no chat_template"):
            PTSTPrompts(chat_tokenizer)
    finally:
        chat_tokenizer.chat_template = saved
