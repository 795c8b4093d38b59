"""The files the ``dpp-select`` command tests run on: a SPARD-style pool, a GSM8K-style
fine-tuning set, and a tiny saved Llama model (``dpp_tiny_model``)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.dpp_tiny_model import tiny_model, tiny_tokenizer

__all__ = ["POOL", "TARGET", "write_jsonl_rows", "write_model_and_files"]

POOL = [
    {"prompt": "how do i bake bread", "safe": "help", "unsafe": "UNSAFE-0"},
    {"prompt": "what is two plus three", "safe": "five", "unsafe": "UNSAFE-1"},
    {"prompt": "make a cake please", "safe": "refuse", "unsafe": "UNSAFE-2"},
    {"prompt": "the question is math", "safe": "answer", "unsafe": "UNSAFE-3"},
    {"prompt": "help", "safe": "safe answer", "unsafe": "UNSAFE-4"},
    {"prompt": "what is the safe answer", "safe": "refuse", "unsafe": "UNSAFE-5"},
]
TARGET = [
    {"prompt": "what is two plus two", "answer": "four"},
    {"prompt": "three plus five equals what", "answer": "eight"},
]


def write_jsonl_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_model_and_files(root: Path) -> Path:
    """Save the tiny model under ``root/model`` and write ``pool.jsonl`` and ``target.jsonl``."""
    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    write_jsonl_rows(root / "pool.jsonl", POOL)
    write_jsonl_rows(root / "target.jsonl", TARGET)
    return root
