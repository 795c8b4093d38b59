"""Safety data from (harmful prompt, refusal) pairs: tokenised, masked to the refusal, padded.

SPARD's safety loss (Algorithm 1) is the negative log-likelihood of the *refusal* given the
harmful prompt: the prompt is context, not a target. :func:`encode_safety_pairs` therefore labels
only the refusal tokens (and the EOS that ends them); the prompt and the padding get the ignore
index -100, which Hugging Face causal LMs leave out of ``.loss``. The prompt is formatted with the
tokenizer's chat template (a user turn plus the assistant header) when it has one, else as
``bos + prompt + "\\n"``, or by a ``render`` callable for training formats that are not a chat
template (the same hook :func:`spag_optim.evaluation.generate_responses` has). Pairs may also be
``dpp-select``'s output rows (``{"prompt", "safe", "unsafe"}``; ``unsafe`` is never read).
:class:`PaddingCollator` right-pads such rows into a batch; :meth:`spag_optim.SafetyBatches.from_pairs`
does both in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from spard_io import token_prefix

__all__ = [
    "IGNORE_INDEX",
    "PaddingCollator",
    "check_rows_fit",
    "encode_pair",
    "encode_safety_pairs",
    "format_prompt",
    "pair_list",
    "pair_prompts",
]

IGNORE_INDEX = -100


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The text before the refusal: the chat template's user turn and assistant header when the
    tokenizer has a template, else ``prompt`` and a newline after the BOS token."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return (tokenizer.bos_token or "") + prompt + "\n"


#: What transformers puts in ``tokenizer.model_max_length`` when the checkpoint states no maximum.
UNSET_MODEL_MAX_LENGTH = int(1e30)


def _pair(item: Any, index: int) -> tuple[str, str]:
    """(prompt, refusal) of one pair, a ``{"prompt", "response"}`` row or a ``dpp-select`` row
    (``{"prompt", "safe", ...}``: the refusal is ``safe``; ``unsafe`` is never read). A row with
    ``response`` beside ``safe`` or ``unsafe`` is refused: its refusal field is ambiguous."""
    if isinstance(item, Mapping):
        field = "response" if "response" in item else "safe"
        clash = [key for key in ("safe", "unsafe") if key in item] if field == "response" else []
        if clash:  # which text is the refusal? A pool's own "response" may be the harmful one
            raise TypeError(
                f"safety pair {index}: the row has both 'response' and {clash[0]!r}, so which "
                "text is the refusal is ambiguous; keep only the refusal's field: {'prompt', "
                "'safe'} rows (dpp-select --keep-fields prompt,safe) or {'prompt', 'response'} rows"
            )
        if "prompt" not in item or field not in item:
            raise TypeError(
                f"safety pair {index}: the row has no 'safe' or 'response' field (or no 'prompt'); "
                "give {'prompt', 'safe'} rows (dpp-select's output), {'prompt', 'response'} rows "
                "(load_spard_pairs) or (prompt, refusal) pairs"
            )
        item = (item["prompt"], item[field])
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(
            f"safety pair {index} is a {type(item).__name__}; give (prompt, refusal) string pairs, "
            "{'prompt', 'safe'} rows (dpp-select's output) or {'prompt', 'response'} rows "
            "(spag_optim.evaluation.load_spard_pairs)"
        )
    for name, text in zip(("prompt", "refusal"), item):
        if not isinstance(text, str):
            raise TypeError(
                f"safety pair {index}: the {name} is a {type(text).__name__}, not a str"
            )
        if not text.isascii():
            try:  # a lone surrogate: the tokenizer would fail with no pair named
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"safety pair {index}: the {name} holds a lone surrogate (half of a UTF-16 "
                    "pair), which no tokenizer takes; fix the text"
                ) from None
    return item[0], item[1]


def pair_list(pairs: Iterable[Any]) -> list[Any]:
    """``pairs`` as a list (any iterable: a list, a generator, a ``datasets.Dataset``)."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs is one string; pass a list of (prompt, refusal) pairs")
    if isinstance(pairs, Mapping):
        raise TypeError("pairs is one row (a dict); pass a list of rows, e.g. [row]")
    if not isinstance(pairs, Iterable):
        raise TypeError(
            f"pairs must be an iterable of (prompt, refusal) pairs, got {type(pairs).__name__}"
        )
    if hasattr(pairs, "columns") and callable(getattr(pairs, "to_dict", None)):
        raise TypeError(
            f"pairs is a {type(pairs).__name__}, which iterates over its column names, not its "
            "rows; pass frame.to_dict('records')"
        )
    return list(pairs)


def pair_prompts(pairs: Sequence[Any]) -> list[str]:
    """The harmful prompts of ``pairs`` (as :func:`encode_safety_pairs` reads them)."""
    return [_pair(item, index)[0] for index, item in enumerate(pairs)]


def _tokenizer_max_length(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length``, None when it states none."""
    limit = getattr(tokenizer, "model_max_length", None)
    if (
        isinstance(limit, int)
        and not isinstance(limit, bool)
        and 0 < limit < UNSET_MODEL_MAX_LENGTH
    ):
        return limit
    return None


def check_rows_fit(rows: Sequence[Mapping[str, Sequence[int]]], limit: int, what: str) -> None:
    """Raise if a row's ``input_ids`` are longer than ``limit`` tokens (``what`` names the limit):
    a learned-position model fails deep inside torch on such a row, a RoPE model silently
    computes a loss at positions it was never trained on."""
    for index, row in enumerate(rows):
        if len(row["input_ids"]) > limit:
            raise ValueError(
                f"safety pair {index} is {len(row['input_ids'])} tokens, longer than {what}={limit}: "
                f"pass max_length={limit} to from_pairs (rows are cut on the right) or drop the pair"
            )


def encode_safety_pairs(
    pairs: Iterable[Any],
    tokenizer: Any,
    max_length: int | None = None,
    render: Callable[[str], str] | None = None,
) -> list[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` per pair: prompt + refusal + EOS, labels -100 on the prompt.

    ``pairs`` is any iterable of (prompt, refusal) pairs, ``{"prompt", "safe"}`` rows
    (``dpp-select``'s output; ``unsafe`` is ignored) or ``{"prompt", "response"}`` rows. Prompt and
    refusal are tokenised separately and concatenated, so the mask boundary is exact whatever the
    tokenizer merges. With ``max_length`` rows are cut on the right; a pair whose prompt alone
    fills it has no refusal token left and is an error, as are an empty refusal and a row longer
    than the tokenizer's ``model_max_length``.
    """
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
    ):
        raise ValueError(f"max_length must be an int >= 2 or None, got {max_length!r}")
    if render is not None and not callable(render):
        raise TypeError(f"render must be a callable prompt -> text, got {type(render).__name__}")
    if not callable(tokenizer):
        raise TypeError(
            f"tokenizer must be the model's tokenizer (callable), got {type(tokenizer).__name__}"
        )
    pairs = pair_list(pairs)
    if len(pairs) == 0:
        raise ValueError("no safety pairs given; SPAG needs at least one (prompt, refusal) pair")
    rows = []
    for index, item in enumerate(pairs):
        prompt, refusal = _pair(item, index)
        if not refusal.strip():
            raise ValueError(f"safety pair {index}: the refusal is empty; give the refusal's text")
        row = encode_pair(tokenizer, prompt, refusal, max_length, render=render)
        if row is None:
            text = _rendered(tokenizer, prompt, render)
            cut = token_prefix(tokenizer, text, max_length)  # type: ignore[arg-type]
            takes = f"{'at least ' if len(cut) < len(text) else ''}{len(_ids(tokenizer, cut))}"
            raise ValueError(
                f"safety pair {index}: no refusal token is left within max_length={max_length} "
                f"(the prompt alone takes {takes} tokens); raise max_length"
            )
        rows.append(row)
    limit = _tokenizer_max_length(tokenizer)
    if limit is not None:
        check_rows_fit(rows, limit, "the tokenizer's model_max_length")
    return rows


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _rendered(tokenizer: Any, prompt: str, render: Callable[[str], str] | None) -> str:
    if render is None:
        return format_prompt(tokenizer, prompt)
    text = render(prompt)
    if not isinstance(text, str):
        raise TypeError(
            f"render returned a {type(text).__name__}; it must return the prompt's text"
        )
    return text


def encode_pair(
    tokenizer: Any,
    prompt: str,
    answer: str,
    max_length: int | None = None,
    *,
    render: Callable[[str], str] | None = None,
) -> dict[str, list[int]] | None:
    """``{"input_ids", "labels"}`` of formatted prompt + answer + EOS, labels -100 on the prompt.

    The prompt is formatted by ``render`` (prompt -> the exact text before the answer, special
    tokens included) or, by default, :func:`format_prompt`. Prompt and answer are tokenised
    separately and concatenated, so the mask boundary is exact whatever the tokenizer merges.
    With ``max_length`` the row is cut on the right; None when the prompt alone fills it (no
    answer token is left to learn from).
    """
    text = _rendered(tokenizer, prompt, render)
    if max_length is not None:  # tokenise only what the cut keeps (a 100 MB text took minutes)
        text, answer = (
            token_prefix(tokenizer, text, max_length),
            token_prefix(tokenizer, answer, max_length),
        )
    prompt_ids = _ids(tokenizer, text)
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
        raise ValueError(
            "the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token"
        )
    return int(pad)


def padded_pairs(
    pairs: Iterable[Any],
    tokenizer: Any,
    max_length: int | None = None,
    render: Callable[[str], str] | None = None,
) -> tuple[list[dict[str, list[int]]], PaddingCollator]:
    """The rows :func:`encode_safety_pairs` makes of ``pairs`` and the :class:`PaddingCollator`
    that batches them: the data and ``collate_fn`` every ``from_pairs`` constructor is given."""
    rows = encode_safety_pairs(pairs, tokenizer, max_length, render)
    return rows, PaddingCollator(pad_token_id(tokenizer))
