"""The methods the demo compares. Each is "which safe data" (a ``dpp_select`` method, or none) plus
the ``SPAGOptimizer`` keyword arguments; everything else (model, data, seed, LoRA, AdamW) is shared.

``spard`` passes no ``trust_region``, so it always shows the library's default. The ``*_trust``
ablations pin each trust-region choice of issue 2 explicitly, so the table says which default the
numbers support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Method", "METHODS", "resolve_methods", "FIXED_ETA"]

#: eta_safe for ``spard_fixed_trust``: 10x the demo's LoRA learning rate, about half the step size
#: SPAG takes uncapped on this model (so the cap binds on some steps but not all).
FIXED_ETA = 0.01


@dataclass(frozen=True)
class Method:
    description: str
    selection: str | None  # dpp_select.select(method=...), or None: no defense
    spag: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    "sft": Method("no defense: plain LoRA fine-tuning on the poisoned data", None),
    "spag_random": Method("SPAG; safe subset drawn uniformly at random", "random"),
    "spag_top_relevance": Method("SPAG; the safe examples most relevant to the fine-tuning set", "top_relevance"),
    "spard": Method("SPAG + relevance-diversity DPP selection (SPARD, library defaults)", "dpp"),
    "spard_relative_trust": Method(
        "spard with trust_region='relative', rho=0.5 (cap: half the utility step)",
        "dpp",
        {"trust_region": "relative", "rho": 0.5},
    ),
    "spard_no_trust": Method("spard with trust_region=None (no cap, paper Table 7)", "dpp", {"trust_region": None}),
    "spard_fixed_trust": Method(
        f"spard with trust_region={FIXED_ETA} (a fixed eta_safe)", "dpp", {"trust_region": FIXED_ETA}
    ),
    "spard_lr_trust": Method(
        "spard with trust_region='lr' (the paper's setting: eta_safe = learning rate)", "dpp", {"trust_region": "lr"}
    ),
    "spard_authors_code": Method(
        "spard with mode='authors_code', tolerance 0.1 (the released code's update)",
        "dpp",
        {"mode": "authors_code", "tolerance": 0.1},
    ),
}


def resolve_methods(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of names, in the order given, without duplicates."""
    if spec.strip() == "all":
        return list(METHODS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--methods is empty; give 'all' or names such as 'sft,spard'")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} or 'all'")
    return list(dict.fromkeys(names))
