"""Whether a quickstart run reproduced a reference run, seed by seed.

Under portable numerics (``numerics.py``) every number of a run but the timings is a function of
the code, the pinned versions and the seed, so a re-run on any x86-64-v3 CPU must match the
committed reference exactly: the aligned models' SHA-256 and every per-seed row (ASR, utility,
refusal probability, projection count). ``seconds`` is the one field left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["compare_with_reference", "load_reference"]

_TIMINGS = {"seconds"}


def _rows(results: Mapping[str, Any]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """(seed, attack, method or "base") -> the row without its timings."""
    rows = {}
    for attack, res in results["attacks"].items():
        for row in res["base"]["seeds"]:
            rows[row["seed"], attack, "base"] = row
        for method, summary in res["methods"].items():
            for row in summary["seeds"]:
                rows[row["seed"], attack, method] = row
    return {k: {f: v for f, v in r.items() if f not in _TIMINGS} for k, r in rows.items()}


def _aligned(results: Mapping[str, Any]) -> dict[int, str]:
    config = results["config"]
    return dict(zip(config["seeds"], config.get("aligned_sha256", [])))


def load_reference(path: Path) -> dict[str, Any]:
    """The reference run in ``path`` (a quickstart ``results.json``), or ValueError naming what
    is wrong: read before the run starts, so a bad file costs nothing."""
    try:
        reference = json.loads(Path(path).read_text())
        _rows(reference), _aligned(reference), reference["config"]["numerics"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--reference {path} is not a readable results.json ({err})") from None
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(
            f"--reference {path} is not a quickstart results.json (nothing at {err}); "
            "give the results.json of a quickstart run"
        ) from None
    return reference


def compare_with_reference(
    results: Mapping[str, Any], reference: Mapping[str, Any]
) -> tuple[list[str], bool]:
    """One line per seed of ``results`` saying whether it matches the ``reference`` run
    (:func:`load_reference`), and whether all did. A seed matches when its aligned model's SHA-256
    and all its rows are equal; a seed, attack or method the reference lacks is reported as not
    checked, and counts as a mismatch."""
    ours, theirs = _rows(results), _rows(reference)
    ours_aligned, their_aligned = _aligned(results), _aligned(reference)
    if results["config"].get("numerics") != reference["config"].get("numerics"):
        return [
            f"numerics {results['config'].get('numerics')!r} differ from the reference's "
            f"{reference['config'].get('numerics')!r}: nothing to compare"
        ], False
    lines, all_match = [], True
    for seed in results["config"]["seeds"]:
        keys = sorted(k for k in ours if k[0] == seed)
        missing = [k for k in keys if k not in theirs]
        differ = [k for k in keys if k in theirs and ours[k] != theirs[k]]
        model_ok = ours_aligned.get(seed) is not None and ours_aligned.get(
            seed
        ) == their_aligned.get(seed)
        if missing or differ or not model_ok:
            all_match = False
            parts = [] if model_ok else ["aligned model's SHA-256 differs"]
            parts += [
                f"{a}/{m}: {_difference(ours[s, a, m], theirs[s, a, m])}" for s, a, m in differ
            ]
            parts += [f"{a}/{m}: not in the reference" for _, a, m in missing]
            lines.append(f"seed {seed}: DIFFERS ({'; '.join(parts)})")
        else:
            lines.append(f"seed {seed}: matches ({len(keys)} rows and the aligned model)")
    return lines, all_match


def _difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    fields = sorted(set(ours) | set(theirs))
    return ", ".join(
        f"{f} {ours.get(f)!r} vs {theirs.get(f)!r}" for f in fields if ours.get(f) != theirs.get(f)
    )
