"""Endless, reproducible, resumable mini-batches of safe data: what SPAG's safety closure draws.

SPARD (ICML 2026, Algorithm 1) evaluates the safety loss on a fresh safe mini-batch after every
utility step. :class:`SafetyBatches` cycles a safe dataset forever, reshuffled on every pass with a
seed, and saves its position (and what identifies its data) in its state dict, so a resumed run
draws exactly the batches an uninterrupted one would. Re-exported by :mod:`spag_optim.safety_data`.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from ._caller_warning import warn_at_caller
from .data_digest import data_digest
from .safety_pairs import padded_pairs
from .warnings import SafeDataChangedWarning, UnrestorablePositionWarning

__all__ = ["SafetyBatches", "move_to_device"]


def move_to_device(batch: Any, device: torch.device | str | None) -> Any:
    """``batch`` with every tensor (inside dicts, lists, tuples) moved to ``device``."""
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        if hasattr(batch, "to"):  # transformers' BatchEncoding moves itself
            return batch.to(device)
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class SafetyBatches:
    """Endless, reproducible mini-batches from a safe dataset.

    ``data`` is a map-style dataset (anything with ``__len__`` and ``__getitem__``: a list of
    examples, a ``torch.utils.data.Dataset``, a Hugging Face ``datasets.Dataset``) or a
    ``DataLoader``. A dataset is shuffled with ``seed`` + pass number on every pass and batched
    with ``collate_fn`` (torch's ``default_collate`` if not given); the position is saved by
    :meth:`state_dict`. A ``DataLoader`` is cycled as it is (its own sampler orders it), and its
    position cannot be saved.

    The seed is a construction argument and stays what it was given: :meth:`load_state_dict`
    restores the position (pass and offset) only. Under DDP each rank builds its batches with its
    own seed (``seed=rank``) and may load any rank's checkpoint (all ranks are at the same
    position); it keeps drawing its own batches.

    Examples that are token lists (``{"input_ids": [...]}``) need a padding ``collate_fn``; use
    :meth:`from_pairs` to tokenise (prompt, refusal) pairs with one.
    """

    def __init__(
        self,
        data: Sequence[Any] | Dataset | DataLoader,
        *,
        batch_size: int = 8,
        collate_fn: Callable[[list], Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        batch_size = int(batch_size)
        if isinstance(data, Mapping):
            raise TypeError(
                "SafetyBatches got one dict, not a dataset: pass a list of examples (one dict per "
                "example), a Dataset or a DataLoader"
            )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.loader = data if isinstance(data, DataLoader) else None
        if self.loader is None:
            if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
                raise TypeError(
                    "SafetyBatches needs a map-style dataset (with __len__ and __getitem__) or a "
                    f"DataLoader, got {type(data).__name__}"
                )
            if len(data) == 0:  # type: ignore[arg-type]
                raise ValueError("the safe dataset is empty; SPAG needs at least one safe example")
            if drop_last and len(data) < batch_size:  # type: ignore[arg-type]
                raise ValueError(
                    f"drop_last=True with {len(data)} examples and batch_size={batch_size} "  # type: ignore[arg-type]
                    "would yield no batch; lower batch_size or set drop_last=False"
                )
            for holds, advice in ((_holds_token_lists, _TOKEN_LISTS), (_holds_text, _TEXT_ROWS)):
                if collate_fn is None and holds(data[0]):  # type: ignore[index]
                    raise TypeError(advice)
        self.data = data
        self.batch_size = batch_size
        self.collate_fn = collate_fn or default_collate
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.device = device
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None
        self._loader_iter: Iterator | None = None
        self._identity: dict[str, Any] | None = None

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[Any],
        tokenizer: Any,
        *,
        batch_size: int = 8,
        seed: int = 0,
        max_length: int | None = None,
        render: Callable[[str], str] | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> SafetyBatches:
        """Batches of (harmful prompt, refusal) pairs, ready for :func:`make_safety_closure`.

        Each pair is labelled on the refusal only: the safety loss ``model(**batch).loss`` is the
        refusal's mean per-token negative log-likelihood given the prompt, the paper's safety loss
        (SPARD, Algorithm 1; prompt and padding are -100). Batches are right-padded with the
        tokenizer's pad token (its EOS if it has none). See :mod:`spag_optim.safety_pairs`.

        Args:
            pairs: any iterable of ``(prompt, refusal)`` string pairs, ``{"prompt", "safe"}`` rows
                (``dpp-select``'s output, as it is; ``"unsafe"`` is never read) or
                ``{"prompt", "response"}`` rows (:func:`~spag_optim.evaluation.load_spard_pairs`;
                a ``"response"`` beside ``"safe"`` or ``"unsafe"`` is refused as ambiguous).
            tokenizer: the model's tokenizer. A pair longer than its ``model_max_length`` is an
                error (and, in :func:`make_safety_closure`, one longer than the model's
                ``max_position_embeddings``).
            batch_size, seed, shuffle, drop_last, device: as for :class:`SafetyBatches`.
            max_length: cut each row to this many tokens (on the right, so the refusal's end).
            render: prompt -> the exact text before the refusal, special tokens included, for
                training formats that are not the tokenizer's chat template. Default: the chat
                template's user turn and assistant header, else ``bos + prompt + "\\n"``
                (:func:`spag_optim.safety_pairs.format_prompt`), as
                :func:`spag_optim.evaluation.generate_responses` renders prompts.

        Raises:
            TypeError: a pair, a row or one of its texts is not what is listed above (named by
                its index); ``pairs`` is a single string or row.
            ValueError: no pairs; an empty refusal; a row with no refusal token left within
                ``max_length``; a row longer than the tokenizer's ``model_max_length``.

        Example::

            from spard_io import read_jsonl
            rows = read_jsonl("safe_subset.jsonl")      # dpp-select ... --out safe_subset.jsonl
            safe = SafetyBatches.from_pairs(rows, tokenizer, batch_size=8, seed=0)
            closure = make_safety_closure(model, safe)
        """
        rows, collate_fn = padded_pairs(pairs, tokenizer, max_length, render)
        return cls(
            rows,
            batch_size=batch_size,
            collate_fn=collate_fn,
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
            device=device,
        )

    def _epoch_order(self) -> list[int]:
        n = len(self.data)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(n, generator=generator).tolist()

    def __iter__(self) -> SafetyBatches:
        return self

    def __next__(self) -> Any:
        if self.loader is not None:
            return move_to_device(self._next_from_loader(), self.device)
        if self._order is None:
            self._order = self._epoch_order()
        n = len(self._order)
        end = self.position + self.batch_size
        if end > n and (self.drop_last or self.position >= n):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
            return next(self)
        indices = self._order[self.position : min(end, n)]
        self.position = min(end, n)
        if self.position >= n:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        batch = self.collate_fn([self.data[i] for i in indices])  # type: ignore[index]
        return move_to_device(batch, self.device)

    @contextlib.contextmanager
    def kept_position(self) -> Iterator[None]:
        """Draw batches inside the block without moving the position seen outside it."""
        saved = (self.epoch, self.position, self._order, self._loader_iter)
        self._loader_iter = None  # a DataLoader is read through a fresh iterator
        try:
            yield
        finally:
            self.epoch, self.position, self._order, self._loader_iter = saved

    def _next_from_loader(self) -> Any:
        assert self.loader is not None
        for _ in range(2):
            if self._loader_iter is None:
                self._loader_iter = iter(self.loader)
            try:
                return next(self._loader_iter)
            except StopIteration:
                self._loader_iter = None
                self.epoch += 1
        raise ValueError("the safety DataLoader yields no batches; give it at least one example")

    def state_dict(self) -> dict[str, Any]:
        """The position: pass number and offset in it (the seed is not state, see the class), and
        for a dataset what identifies it (``"data"``: its length and, for a list, a content hash;
        :func:`~spag_optim.data_digest.data_digest`), so that a resume over other safe data warns."""
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        if self.loader is None:
            if self._identity is None:  # read once: the state is saved at every step
                self._identity = {"num_examples": len(self.data), "sha256": data_digest(self.data)}  # type: ignore[arg-type]
            state["data"] = dict(self._identity)
        return state

    def check_state_dict(self, state: Any) -> None:
        """Raise, naming what is missing or wrong, if ``state`` is not a position of this data."""
        if not isinstance(state, Mapping):
            raise ValueError(f"the safe batches' state must be a dict, got {type(state).__name__}")
        missing = [key for key in ("epoch", "position") if key not in state]
        if missing:
            raise ValueError(f"the safe batches' state lacks {missing}")
        if "data" in state and not isinstance(state["data"], Mapping):
            raise ValueError(
                f"the safe batches' 'data' entry must be a dict, got {type(state['data']).__name__}"
            )
        for key in ("epoch", "position"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"the safe batches' {key} must be an int >= 0, got {value!r}")
        if self.loader is None and state["position"] > len(self.data):  # type: ignore[arg-type]
            raise ValueError(
                f"the safe batches' position {state['position']} is beyond the {len(self.data)} "  # type: ignore[arg-type]
                "safe examples: the checkpoint was saved with other safe data"
            )

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the position; the seed given at construction is kept."""
        self.check_state_dict(state)
        if self.loader is not None:
            warn_at_caller(
                "SafetyBatches over a DataLoader cannot restore its position; restarting it",
                UnrestorablePositionWarning,
            )
            return
        self._warn_if_other_data(state.get("data"))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None

    def _warn_if_other_data(self, saved: Any) -> None:
        """Warn when the position was saved over other safe data than these (checkpoints of
        earlier versions do not say: nothing to compare)."""
        if saved is None:
            return
        mine = self.state_dict()["data"]
        counts = (saved.get("num_examples"), mine["num_examples"])
        hashes = (saved.get("sha256"), mine["sha256"])
        if counts[0] == counts[1] and (None in hashes or hashes[0] == hashes[1]):
            return
        change = (
            f"{counts[0]} examples, these are {counts[1]}"
            if counts[0] != counts[1]
            else f"{counts[0]} examples with other contents"
        )
        warn_at_caller(
            f"SafetyBatches.load_state_dict: the position was saved over other safe data ({change}), "
            "so the resumed run draws other batches than the interrupted one would. Resume with "
            "the safe data the checkpoint was saved with; if the change is meant (new safe data, "
            "or each rank its own shard), ignore this warning",
            SafeDataChangedWarning,
        )


_TOKEN_LISTS = (
    "the safe examples hold token lists (e.g. {'input_ids': [...]}), which torch's default collate "
    "cannot batch: pass collate_fn (a padding collator, e.g. "
    "spag_optim.safety_pairs.PaddingCollator) or use SafetyBatches.from_pairs(pairs, tokenizer)"
)
_TEXT_ROWS = (
    "the safe examples are text (e.g. dpp-select's {'prompt', 'safe', 'unsafe'} rows), which the "
    "model cannot take: tokenise them with SafetyBatches.from_pairs(rows, tokenizer), or pass "
    "collate_fn= if your loss_fn tokenises text itself"
)


def _holds_token_lists(example: Any) -> bool:
    """Whether ``example`` is (or maps names to) a Python list of token ids (tuples such as
    ``(features, label)`` are batched fine by the default collate)."""
    values = example.values() if isinstance(example, Mapping) else [example]
    return any(
        isinstance(v, list)
        and len(v) > 0
        and isinstance(v[0], numbers.Integral)
        and not isinstance(v[0], bool)
        for v in values
    )


def _holds_text(example: Any) -> bool:
    """Whether ``example`` is a row that maps names to strings (text no model takes as input)."""
    return isinstance(example, Mapping) and any(isinstance(v, str) for v in example.values())
