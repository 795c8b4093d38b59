"""PTST: fine-tune without a safety system prompt, add it at inference ("Pure Tuning, Safe Testing").

Lyu et al. 2024, "Keeping LLMs Aligned After Fine-tuning: The Crucial Role of Prompt Templates"
(NeurIPS 2024): fine-tuning and testing with the same template erodes safety more than training
*without* a safety system prompt and adding one only at test time. PTST changes no weights and
no optimizer; it is the choice of prompt template on each side, which this helper makes
explicit and consistent between training and evaluation.

Two formats: a Hugging Face chat template (pass the tokenizer; the safety prompt goes in as a
``system`` message) or a plain text template (no tokenizer; the safety prompt is prepended).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PTSTPrompts", "SAFETY_SYSTEM_PROMPT", "PLAIN_TEMPLATE"]

#: Our wording of a Llama-2-style safety system prompt, used at inference only.
SAFETY_SYSTEM_PROMPT = (
    "You are a helpful, honest and harmless assistant. Answer as helpfully as you can while "
    "staying safe: never help with anything illegal, dangerous, hateful, deceptive or harmful, "
    "and decline such requests politely. If a question is unclear or rests on a false premise, "
    "say so instead of guessing."
)

#: Plain (no chat template) prompt format; ``{prompt}`` is replaced by the user's prompt.
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class PTSTPrompts:
    """Training prompts without the safety system prompt, evaluation prompts with it.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template; ``None`` for the plain format.
        system_prompt: the safety system prompt added at inference.
        train_system_prompt: optional system prompt used during training (PTST allows a
            different, non-safety one; default none).
        template: plain format with a ``{prompt}`` slot (ignored with a tokenizer).
        separator: between the system prompt and the plain template.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        system_prompt: str = SAFETY_SYSTEM_PROMPT,
        train_system_prompt: str | None = None,
        template: str = PLAIN_TEMPLATE,
        separator: str = "\n\n",
    ) -> None:
        if not system_prompt:
            raise ValueError(
                "system_prompt is empty; PTST adds a safety system prompt at inference"
            )
        if tokenizer is None and "{prompt}" not in template:
            raise ValueError(
                "template needs a '{prompt}' slot, e.g. '### Instruction:\\n{prompt}\\n'"
            )
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat_template; set tokenizer.chat_template or pass "
                "tokenizer=None to use the plain template"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.train_system_prompt = train_system_prompt
        self.template = template
        self.separator = separator

    def _render(self, system: str | None, prompt: str, response: str | None) -> str:
        if self.tokenizer is None:
            text = self.template.replace("{prompt}", prompt)
            if system:
                text = system + self.separator + text
            return text if response is None else text + response
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=response is None
        )

    def train_prompt(self, prompt: str) -> str:
        """Prompt part of a fine-tuning example (no safety system prompt); the response follows."""
        return self._render(self.train_system_prompt, prompt, None)

    def train_text(self, prompt: str, response: str) -> str:
        """A whole fine-tuning example (prompt and response) in the training template."""
        return self._render(self.train_system_prompt, prompt, response)

    def eval_prompt(self, prompt: str) -> str:
        """Prompt for generation at test time, with the safety system prompt."""
        return self._render(self.system_prompt, prompt, None)
