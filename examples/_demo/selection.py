"""Choosing SPAG's safe data: a few percent of the fine-tuning set's size, picked from the safe pool
by ``dpp_select`` on the aligned model's own representation of the prompts.

Embeddings are the aligned model's mean-pooled final hidden states of the chat-formatted prompts,
so "relevant" means "the model sees it like the fine-tuning data": here, harmful *questions* like the
attack's, rather than the imperative instructions that also sit in the pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import dpp_select

from .data import Example
from .tokenizer import chat_prompt

__all__ = ["SafeSelector"]


class SafeSelector:
    """Embeds the pool and the fine-tuning set once, then answers ``select(method)`` for each
    method (results are memoised: methods sharing a selection share the same safe examples)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerFast,
        pool: Sequence[Example],
        finetune: Sequence[Example],
        *,
        ratio: float,
        beta: float,
        seed: int,
        progress: bool = False,
    ):
        if not pool:
            raise ValueError("the safe pool is empty; SPAG needs safe examples to select from")
        self.pool = list(pool)
        self.ratio, self.n_finetune = ratio, len(finetune)
        self.beta = beta
        self.seed = seed
        self._pool_emb = self._embed(model, tokenizer, self.pool, progress)
        self._target_emb = self._embed(model, tokenizer, finetune, progress)
        self._chosen: dict[tuple[str, int], list[Example]] = {}

    @staticmethod
    def _embed(model, tokenizer, examples: Sequence[Example], progress: bool) -> np.ndarray:
        texts = [chat_prompt(ex.prompt) for ex in examples]
        return dpp_select.embed_texts(texts, model, tokenizer, batch_size=64, progress=progress)

    @classmethod
    def for_demo(cls, model: PreTrainedModel, data, config) -> SafeSelector:
        """The selector of the demo's ``data`` (a ``DemoData``) under ``config``: its pool and
        fine-tuning set, the config's safe ratio and beta, the config's seed."""
        return cls(
            model,
            data.tokenizer,
            data.safe_pool,
            data.finetune,
            ratio=config.safe_ratio,
            beta=config.beta,
            seed=config.seed,
        )

    def select(self, method: str, ratio: float | None = None) -> list[Example]:
        """The safe examples ``dpp_select.select(method=method)`` picks: ``ratio`` (default: the
        selector's) times the fine-tuning set's size, at least 1, at most the whole pool."""
        share = self.ratio if ratio is None else ratio
        k = min(len(self.pool), max(1, round(share * self.n_finetune)))
        if (method, k) not in self._chosen:
            result = dpp_select.select(
                self._pool_emb,
                self._target_emb,
                k=k,
                method=method,
                beta=self.beta,
                seed=self.seed,
            )
            self._chosen[method, k] = [self.pool[int(i)] for i in result.indices]
        return self._chosen[method, k]
