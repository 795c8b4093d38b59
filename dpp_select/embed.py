"""Text embeddings for selection: mean of the final hidden states over real tokens (Appendix D).

Texts are tokenized once, sorted by length and batched so that each batch carries little padding,
padded on the right (so with a causal model the real tokens never attend to padding), run without
gradients, mean-pooled over the attention mask and returned in the caller's order as float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from spard_io import token_prefix

from .distributed import shard_range

__all__ = ["EmptyTextError", "embed_texts"]

logger = logging.getLogger(__name__)


def _encode_with_sentence_transformer(
    model: Any, texts: list[str], batch_size: int, progress: bool
) -> np.ndarray:
    out = model.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True
    )
    return np.asarray(out, dtype=np.float32)


class EmptyTextError(ValueError):
    """Texts that produce no tokens, so their mean embedding is undefined; ``rows`` holds their
    indices in the caller's list of texts."""

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = [int(r) for r in rows]
        super().__init__(
            f"texts {self.rows[:10]} produce no tokens; drop them or use a "
            "tokenizer that adds a BOS token"
        )


def _share(texts: list[str], process_group: Any) -> tuple[list[str], int]:
    """This rank's contiguous share of ``texts`` and the index of its first text."""
    if process_group is None:
        return texts, 0
    world = torch.distributed.get_world_size(process_group)
    if len(texts) < world:  # the same decision on every rank
        raise ValueError(
            f"{len(texts)} texts cannot be shared among {world} ranks; embed them in one process"
        )
    lo, hi = shard_range(len(texts), process_group)
    return texts[lo:hi], lo


def _check_texts(texts: list[str], batch_size: int, max_length: int) -> None:
    if not texts:
        raise ValueError("no texts to embed; pass at least one string")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; items {bad[:10]} are not")
    if batch_size < 1 or max_length < 1:
        raise ValueError("batch_size and max_length must be positive")


def embed_texts(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_length: int = 512,
    device: torch.device | str | None = None,
    progress: bool = True,
    process_group: Any = None,
) -> np.ndarray:
    """Embed ``texts`` as an (len(texts), hidden) float32 array.

    ``model`` is a Hugging Face model (base or causal LM) and ``tokenizer`` its tokenizer; each
    text is truncated to ``max_length`` tokens. With ``tokenizer=None`` a model with an
    ``encode`` method (a sentence-transformers model, when that package is installed) is used as
    it is. ``device`` defaults to the model's device. Texts that tokenize to nothing raise an
    :class:`EmptyTextError` naming their indices in ``texts``, since their mean embedding would
    be undefined.

    With a ``process_group`` (``torch.distributed``), this rank embeds and returns only its
    contiguous share of ``texts`` (``distributed.shard_range``: the ranks' results, concatenated
    in rank order, are the whole set's embeddings), so R ranks share the model forward passes.
    """
    if isinstance(texts, str):
        raise TypeError("texts is one string; pass a list of strings")
    texts, first = _share(list(texts), process_group)
    _check_texts(texts, batch_size, max_length)
    if tokenizer is None:
        if not callable(getattr(model, "encode", None)):
            raise ValueError(
                "pass the model's tokenizer, or a model with an encode() method "
                "(sentence-transformers)"
            )
        return _encode_with_sentence_transformer(model, texts, batch_size, progress)
    cut = [token_prefix(tokenizer, text, max_length) for text in texts]  # never tokenised whole
    ids = tokenizer(cut, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise EmptyTextError(first + empty)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if device is None:
        device = next(model.parameters()).device
    out = _mean_hidden_states(model, ids, lengths, batch_size, pad_id, device, progress)
    logger.info("embedded %d texts (dim %d)", len(texts), out.shape[1])
    return out


def _mean_hidden_states(
    model: Any,
    ids: list,
    lengths: np.ndarray,
    batch_size: int,
    pad_id: int,
    device: Any,
    progress: bool,
) -> np.ndarray:
    """Mean-pooled final hidden states of the tokenized texts, in their order, as float32."""
    from tqdm.auto import tqdm

    n = len(ids)
    order = np.argsort(-lengths, kind="stable")
    was_training = model.training
    model.eval()
    out = np.empty((n, 0), dtype=np.float32)
    try:
        with torch.inference_mode():
            bar = tqdm(total=n, desc="embedding", disable=not progress, unit="text")
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                width = int(lengths[batch].max())
                input_ids = torch.full((batch.size, width), pad_id, dtype=torch.long)
                mask = torch.zeros((batch.size, width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = torch.tensor(ids[i], dtype=torch.long)
                    mask[row, : lengths[i]] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                result = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                hidden = result.hidden_states[-1].to(torch.float32)
                weights = mask.unsqueeze(-1).to(torch.float32)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
                if out.shape[1] == 0:
                    out = np.empty((n, pooled.shape[1]), dtype=np.float32)
                out[batch] = pooled.cpu().numpy()
                bar.update(batch.size)
            bar.close()
    finally:
        model.train(was_training)
    return out
