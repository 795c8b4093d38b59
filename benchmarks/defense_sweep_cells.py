"""The defense sweep's stored cells: the results file read and validated, and which cells one
report entry may pool.

``defense_sweep.json`` keeps every cell under its own key (method, attack, seed, a hash of the
configuration, the environment key), so cells of other configurations (a ``--smoke`` run into the
same ``--out``, a changed method option) and of other machines under one environment label live
side by side. A report entry pools seeds, so it may pool only cells of one configuration (the demo
config without the seed, and the method's definition, as each cell records them) computed in one
environment: grouping by label, method, attack and seed alone let the last cell written win,
silently. :func:`separate` keeps each apart: the configuration with the most cells keeps the
method's name and each other becomes its own row (``method@hash``); the machine with the most
cells keeps the label and each other becomes ``label#2``, ``label#3``; notes say what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LEGACY", "REQUIRED_CELL_FIELDS", "label_of", "load_state", "separate"]

#: The label of cells recorded before environments were; kept apart from every comparison.
LEGACY = "legacy"
#: What every stored cell must have for the report; a cell lacking one is an error, not a gap.
REQUIRED_CELL_FIELDS = ("method", "attack", "seed", "asr", "utility", "base")
#: What every run record must have (the report's "Runs" line).
RUN_FIELDS = ("cells", "wall_seconds", "workers")

Cells = Sequence[Mapping[str, Any]]


def _bad_cell(key: str, cell: Any) -> str | None:
    """Why the stored ``cell`` cannot be reported, or None."""
    if not isinstance(cell, dict):
        return f"cell {key!r} is a {type(cell).__name__}, not an object"
    missing = [f for f in REQUIRED_CELL_FIELDS if f not in cell]
    if missing:
        return f"cell {key!r} lacks {missing}"
    for name in ("method", "attack"):
        if not isinstance(cell[name], str) or not cell[name]:
            return f"cell {key!r} has {name} {cell[name]!r}, not a name"
    if isinstance(cell["seed"], bool) or not isinstance(cell["seed"], int):
        return f"cell {key!r} has seed {cell['seed']!r}, not an int"
    for name in ("asr", "utility", "refusal_prob"):
        value = cell.get(name, 0.0)  # refusal_prob: absent from cells of earlier versions
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0.0 <= value <= 1.0
        ):
            return f"cell {key!r} has {name} {value!r}, not a number in [0, 1]"
    if not isinstance(cell.get("environment", {}), dict):
        return f"cell {key!r} has an environment that is not an object"
    return None


def load_state(path: Path) -> dict[str, Any]:
    """The results file at ``path``, validated (an empty state when there is none). Raises one
    ValueError naming the file and what to do when it cannot be read or a cell is unusable."""
    if not path.is_file():
        return {"cells": {}, "runs": []}
    fix = "restore it (git checkout) or move it away; it was not changed"
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}), perhaps truncated; {fix}") from None
    if not isinstance(state, dict) or not isinstance(state.get("cells"), dict):
        raise ValueError(f"{path} is not a defense_sweep results file (no 'cells' object); {fix}")
    if not isinstance(state.setdefault("runs", []), list):
        raise ValueError(f"{path}: 'runs' is not a list; {fix}")
    for number, run in enumerate(state["runs"]):
        missing = [k for k in RUN_FIELDS if not isinstance(run, dict) or not _number(run.get(k))]
        if missing:
            raise ValueError(f"{path}: run {number} lacks {missing} (numbers); {fix}")
    for key, cell in state["cells"].items():
        problem = _bad_cell(key, cell)
        if problem:
            raise ValueError(f"{path}: {problem}; delete that cell to recompute it, or {fix}")
    return state


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def label_of(cell: Mapping[str, Any]) -> str:
    """The environment label of ``cell`` (``native``, ``avx2``, ``portable``, ...; :data:`LEGACY`
    if none), with ``/<recipe>`` for an aligned-model recipe other than the base: the report sets
    recipes side by side as it does environments."""
    label = cell.get("environment", {}).get("label", LEGACY)
    return f"{label}/{cell['recipe']}" if cell.get("recipe", "base") != "base" else label


def _settings(cell: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell ran under, flat: its config without the seed, and its method's definition."""
    flat = {k: v for k, v in (cell.get("config") or {}).items() if k != "seed"}
    flat.update((f"method_spec.{k}", v) for k, v in (cell.get("method_spec") or {}).items())
    return flat


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:6]


def _most_first(groups: Mapping[str, list]) -> list[str]:
    """The keys of ``groups``, the one with the most members first (ties: the first seen)."""
    main = max(groups, key=lambda k: len(groups[k]))
    return [main] + [k for k in groups if k != main]


def _machines(cells: Cells) -> list[Mapping[str, Any]]:
    """``cells`` with a label of its own for each extra machine that used one label."""
    by_label: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        by_label[label_of(c)][json.dumps(c.get("environment", {}), sort_keys=True)].append(c)
    out: list[Mapping[str, Any]] = []
    for label, machines in by_label.items():
        for n, key in enumerate(_most_first(machines)):
            renamed = f"{label}#{n + 1}" if n and label != LEGACY else label
            out += [
                c
                if renamed == label
                else {**c, "environment": {**c["environment"], "label": renamed}}
                for c in machines[key]
            ]
    return out


def _differences(cell: Mapping[str, Any], main: Mapping[str, Any], method: str) -> str:
    ours, theirs = _settings(cell), _settings(main)
    return (
        ", ".join(
            f"{k} {ours.get(k, 'unset')} (`{method}`: {theirs.get(k, 'unset')})"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
        )
        or "settings not recorded"
    )


def separate(cells: Cells) -> tuple[list[Mapping[str, Any]], list[str]]:
    """``cells`` made safe to pool by label, method, attack and seed (see the module docstring),
    and one note per configuration or machine set apart."""
    cells = _machines(cells)
    notes = [
        f"- `{label}` is another machine under that label (its cells are not pooled with the others)."
        for label in dict.fromkeys(label_of(c) for c in cells)
        if "#" in label
    ]
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        groups[(label_of(c), c["method"], c["attack"])][_digest(_settings(c))].append(c)
    out: list[Mapping[str, Any]] = []
    for (label, method, attack), configurations in groups.items():
        main, *others = _most_first(configurations)
        out += configurations[main]
        for digest in others:
            name = f"{method}@{digest}"
            out += [{**c, "method": name} for c in configurations[digest]]
            notes.append(
                f"- `{name}` ({attack}, {label}): {len(configurations[digest])} cell(s) under "
                f"another configuration than `{method}`'s {len(configurations[main])}: "
                f"{_differences(configurations[digest][0], configurations[main][0], method)}."
            )
    return out, notes
