"""Loaders for the SPARD safety JSONL files and the GSM8K / OpenBookQA utility files.

Paths are always given by the caller; nothing is downloaded. Files are read with the shared
strict reader (:func:`spard_io.read_jsonl`), so a malformed line fails with the file and
line number. Safety rows keep only the fields asked for: loading the refusals never carries a
row's ``unsafe`` text along, where it could end up in a log or a results file.
"""

from __future__ import annotations

import os

from spard_io import JSONLError, read_jsonl

from .metrics import extract_gsm8k_answer, parse_option

__all__ = ["load_spard_pairs", "load_attack_prompts", "load_gsm8k", "load_openbookqa"]

PathLike = str | os.PathLike


def _line_numbers(path: PathLike) -> list[int]:
    """1-based line numbers of the rows ``read_jsonl`` returns (it skips blank lines)."""
    with open(os.fspath(path), encoding="utf-8") as handle:
        return [i for i, line in enumerate(handle, start=1) if line.strip()]


def _nonempty(rows: list[dict], path: PathLike) -> list[dict]:
    if not rows:
        raise JSONLError(f"{os.fspath(path)}: no rows; the file is empty")
    return rows


def load_spard_pairs(
    path: PathLike, response: str = "safe", *, prompt_field: str = "prompt"
) -> list[dict[str, str]]:
    """``[{"prompt", "response"}]`` from a SPARD safety file (fields prompt, safe, unsafe).

    ``response="safe"`` gives the refusals (the safe pool for SPAG / SafeInstr);
    ``response="unsafe"`` gives the harmful answers used only to simulate an attack.
    """
    if response not in ("safe", "unsafe"):
        raise ValueError(f"response must be 'safe' or 'unsafe', got {response!r}")
    rows = read_jsonl(path, required=(prompt_field, response))
    return _nonempty([{"prompt": r[prompt_field], "response": r[response]} for r in rows], path)


def load_attack_prompts(path: PathLike, *, prompt_field: str = "prompt") -> list[str]:
    """The harmful prompts of an attack evaluation set, in file order."""
    rows = _nonempty(read_jsonl(path, required=(prompt_field,)), path)
    return [r[prompt_field] for r in rows]


def load_gsm8k(
    path: PathLike, *, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[dict]:
    """``[{"prompt", "answer", "target"}]``; ``target`` is the float after ``####``.

    Use ``prompt_field="question"`` for the original GSM8K release.
    """
    rows = _nonempty(read_jsonl(path, required=(prompt_field, answer_field)), path)
    out = []
    for index, row in enumerate(rows):
        target = extract_gsm8k_answer(row[answer_field], fallback_last_number=False)
        if target is None:
            line = _line_numbers(path)[index]
            raise JSONLError(
                f"{os.fspath(path)}:{line}: field {answer_field!r} has no '#### N' final "
                "answer; GSM8K solutions must end with one"
            )
        out.append({"prompt": row[prompt_field], "answer": row[answer_field], "target": target})
    return out


def load_openbookqa(
    path: PathLike,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    target_field: str = "target_answer",
    num_options: int = 4,
) -> list[dict]:
    """``[{"prompt", "answer", "target"}]``; ``target`` is the 1-based correct option.

    The target comes from ``target_field`` (``"answer2"``, ``"B"``, ...) when a row has it (the
    SPARD test split), otherwise from the ``... the correct answer is answerN`` ending of the
    reference answer (the training split).
    """
    rows = _nonempty(read_jsonl(path, required=(prompt_field, answer_field)), path)
    out = []
    for index, row in enumerate(rows):
        target = None
        if target_field in row:
            target = parse_option(str(row[target_field]).strip(), num_options)
        else:
            marker = row[answer_field].lower().rfind("correct answer is")
            if marker >= 0:
                tail = row[answer_field][marker + len("correct answer is") :].strip(" :")
                target = parse_option(tail, num_options)
        if target is None:
            line = _line_numbers(path)[index]
            raise JSONLError(
                f"{os.fspath(path)}:{line}: no correct option found; give {target_field!r} "
                f"(e.g. 'answer2') or end {answer_field!r} with 'the correct answer is answerN'"
            )
        out.append({"prompt": row[prompt_field], "answer": row[answer_field], "target": target})
    return out
