"""A results table shaped like the SPARD paper's Table 1.

One row per method; per attack set an ASR column (percent) and an HS column (mean 1-5 score);
then the unweighted average over attack sets (as the paper's "Avg") and one column per utility
benchmark (accuracy, percent). Markdown for READMEs and notes, plain text for terminals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .metrics import SafetyResult

__all__ = ["format_table"]

_MISSING = "-"


def _asr_hs(entry: Any, method: str, attack: str) -> tuple[float, float]:
    if isinstance(entry, SafetyResult):
        return entry.asr, entry.hs
    if isinstance(entry, Mapping) and "asr" in entry and "hs" in entry:
        return float(entry["asr"]), float(entry["hs"])
    raise ValueError(
        f"results[{method!r}]['safety'][{attack!r}] must be a SafetyResult or a dict with "
        f"'asr' and 'hs', got {type(entry).__name__}"
    )


def _ordered(keys_per_method: list[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for keys in keys_per_method:
        for key in keys:
            seen.setdefault(key, None)
    return list(seen)


def format_table(
    results: Mapping[str, Mapping[str, Any]],
    *,
    attacks: Sequence[str] | None = None,
    utilities: Sequence[str] | None = None,
    style: str = "markdown",
    digits: int = 1,
) -> str:
    """Render ``results`` as a table.

    Args:
        results: ``{method: {"safety": {attack: SafetyResult | {"asr", "hs"}}, "utility":
            {benchmark: accuracy}}}``; ASR and accuracy are fractions in [0, 1] (shown as
            percent). Either key may be absent. This is also the shape of ``results.json``
            written with :meth:`SafetyResult.to_dict`.
        attacks, utilities: column order; default the order of first appearance.
        style: ``"markdown"`` or ``"text"`` (space-aligned).
        digits: decimals for percentages (HS always has two).

    A method missing an attack set shows ``-`` there and in its average, so averages are always
    over the same sets.
    """
    if style not in ("markdown", "text"):
        raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
    if not results:
        raise ValueError("no results to tabulate")
    for method, entry in results.items():
        unknown = set(entry) - {"safety", "utility"}
        if unknown:
            raise ValueError(
                f"results[{method!r}] has unknown keys {sorted(unknown)}; use 'safety' and "
                "'utility'"
            )
    if attacks is None:
        attacks = _ordered([list(r.get("safety", {})) for r in results.values()])
    if utilities is None:
        utilities = _ordered([list(r.get("utility", {})) for r in results.values()])

    header = ["Method"]
    for attack in attacks:
        header += [f"{attack} ASR", f"{attack} HS"]
    if attacks:
        header += ["Avg ASR", "Avg HS"]
    header += [f"{u} Acc" for u in utilities]

    rows = [_row(method, entry, attacks, utilities, digits) for method, entry in results.items()]
    if style == "markdown":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _row(
    method: str,
    entry: Mapping[str, Any],
    attacks: Sequence[str],
    utilities: Sequence[str],
    digits: int,
) -> list[str]:
    """One method's cells: ASR and HS per attack, their averages, then each utility."""
    safety = entry.get("safety", {})
    utility = entry.get("utility", {})
    row = [str(method)]
    pairs = []
    for attack in attacks:
        if attack in safety:
            asr, hs = _asr_hs(safety[attack], method, attack)
            pairs.append((asr, hs))
            row += [f"{100 * asr:.{digits}f}", f"{hs:.2f}"]
        else:
            row += [_MISSING, _MISSING]
    if attacks:
        if len(pairs) == len(attacks):
            row += [
                f"{100 * sum(a for a, _ in pairs) / len(pairs):.{digits}f}",
                f"{sum(h for _, h in pairs) / len(pairs):.2f}",
            ]
        else:
            row += [_MISSING, _MISSING]
    for name in utilities:
        row.append(f"{100 * float(utility[name]):.{digits}f}" if name in utility else _MISSING)
    return row
