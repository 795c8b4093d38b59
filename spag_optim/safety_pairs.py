"""Safety data from (harmful prompt, refusal) pairs: tokenised, masked to the refusal, padded.

SPARD's safety loss (Algorithm 1) is the negative log-likelihood of the *refusal* given the
harmful prompt: the prompt is context, not a target. :func:`encode_safety_pairs` therefore labels
only the refusal tokens (and the EOS that ends them); the prompt and the padding get the ignore
index -100, which Hugging Face causal LMs leave out of ``.loss``. The prompt is formatted with the
tokenizer's chat template (a user turn plus the assistant header) when it has one, else as
``bos + prompt + "\\n"``. :class:`PaddingCollator` right-pads such rows into a batch.
:meth:`spag_optim.SafetyBatches.from_pairs` does both in one call.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

__all__ = ["IGNORE_INDEX", "PaddingCollator", "encode_pair", "encode_safety_pairs", "format_prompt"]

IGNORE_INDEX = -100


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text before the refusal: the chat template's user turn and assistant header when the
    tokenizer has a template, else ``prompt`` and a newline after the BOS token."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return (tokenizer.bos_token or "") + prompt + "\n"


def _pair(item: Any, index: int) -> tuple[str, str]:
    if isinstance(item, Mapping) and "prompt" in item and "response" in item:
        item = (item["prompt"], item["response"])
    if (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(text, str) for text in item)):
        return item[0], item[1]
    raise TypeError(
        f"safety pair {index} is a {type(item).__name__}; give (prompt, refusal) string pairs "
        "(or {'prompt': ..., 'response': ...} rows as spag_optim.evaluation.load_spard_pairs returns)"
    )


def encode_safety_pairs(
    pairs: Sequence[Any], tokenizer: Any, max_length: Optional[int] = None
) -> list[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` per pair: prompt + refusal + EOS, labels -100 on the prompt.

    Prompt and refusal are tokenised separately and concatenated, so the mask boundary is exact
    whatever the tokenizer merges. With ``max_length`` rows are cut on the right; a pair whose
    prompt alone fills it has no refusal token left and is an error.
    """
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 2):
        raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
    if len(pairs) == 0:
        raise ValueError("no safety pairs given; SPAG needs at least one (prompt, refusal) pair")
    rows = []
    for index, item in enumerate(pairs):
        prompt, refusal = _pair(item, index)
        row = encode_pair(tokenizer, prompt, refusal, max_length)
        if row is None:
            prompt_len = len(_ids(tokenizer, format_prompt(tokenizer, prompt)))
            raise ValueError(
                f"safety pair {index}: no refusal token is left within max_length={max_length} "
                f"(the prompt alone takes {prompt_len} tokens); raise max_length"
            )
        rows.append(row)
    return rows


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(
    tokenizer: Any, prompt: str, answer: str, max_length: Optional[int] = None
) -> Optional[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` of formatted prompt + answer + EOS, labels -100 on the prompt.

    Prompt and answer are tokenised separately and concatenated, so the mask boundary is exact
    whatever the tokenizer merges. With ``max_length`` the row is cut on the right; None when
    the prompt alone fills it (no answer token is left to learn from).
    """
    prompt_ids = _ids(tokenizer, format_prompt(tokenizer, prompt))
    answer_ids = _ids(tokenizer, answer)
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


class PaddingCollator:
    """Right-pad encoded rows into ``input_ids``, ``attention_mask`` and ``labels`` tensors
    (padding: ``pad_token_id`` in the inputs, -100 in the labels). Picklable."""

    def __init__(self, pad_token_id: int) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its EOS (padding is masked out of the loss either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return int(pad)


def padded_pairs(
    pairs: Sequence[Any], tokenizer: Any, max_length: Optional[int] = None
) -> tuple[list[dict[str, list[int]]], PaddingCollator]:
    """The rows :func:`encode_safety_pairs` makes of ``pairs`` and the :class:`PaddingCollator`
    that batches them: the data and ``collate_fn`` every ``from_pairs`` constructor is given."""
    return encode_safety_pairs(pairs, tokenizer, max_length), PaddingCollator(pad_token_id(tokenizer))
