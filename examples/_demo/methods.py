"""The methods the demo compares. Each is "which safe data" (a ``dpp_select`` method, or none),
what it does with them (an optimizer wrapper over AdamW, and/or mixing them into the fine-tuning
data), and the prompt format it is tested with; everything else (model, data, seed, LoRA, AdamW,
the number of steps) is shared.

``spard`` passes no ``trust_region``, so it always shows the library's default. The ``*_trust``
ablations pin each other trust-region choice explicitly (``"relative"`` with ``rho=0.5``, a
fixed eta_safe, ``"lr"``, and none: paper Table 7's "w/o eta_safe"), so the table says which
default the numbers support. ``spard_repeated`` is spard with the projection repeated on the step's
safe batch until the loss is at tau (``projection_iterations``, see
``benchmarks/results/spag_constraint.md``); ``spard_more_safe`` is spard with ten times the safe
data.

The paper's baselines (``spag_optim.baselines``) use the same safe subset as ``spard`` (the DPP
selection, 3% of the fine-tuning set), so the table compares what each does with the same data.
Their hyper-parameters are the neutral or paper settings scaled to this run's 84 steps, not tuned
on the results:

* ``penalty``: lambda 1 (the unweighted sum L_fit + max(L_safe - tau, 0)), at SPAG's tau 0.01.
* ``lisa``: one alignment step per nine fine-tuning steps (the paper's K1:K2 = 100:900, scaled
  down), proximal rho 1 (the low end of the authors' 1-3). An alignment step consumes the batch
  it replaces (as the authors' trainer does), so Lisa sees ~90% of the user batches.
* ``safegrad``: no hyper-parameters; the refusal loss stands in for the paper's KL to the aligned
  model, as it does for SPAG.
* ``safeinstr``: the selected rows join the fine-tuning data (3%, the paper's setting); AdamW alone.
* ``guardspace``: GuardSpace adapters (``spag_optim.guardspace``) instead of LoRA, with the DPP
  subset as both its safety and its null-space data (see :mod:`.guardspace` for the threshold);
  AdamW alone. ``guardspace_spard``: the same adapters trained by SPAG on the same subset.
* ``ptst``: plain fine-tuning; ASR and utility are measured with the safety system prompt
  (:data:`.tokenizer.SAFETY_SYSTEM_PROMPT`) before the chat prompt. Caveat: the tiny aligned
  model never saw a system prompt (a real chat model is aligned with them), so to it the prompt
  is an unfamiliar prefix; the row shows what that prefix does, not PTST on a model that knows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spag_optim.baselines import PTSTPrompts

from . import optimizers
from .optimizers import Wrapper
from .tokenizer import SAFETY_SYSTEM_PROMPT, chat_prompt

__all__ = [
    "Method",
    "METHODS",
    "resolve_methods",
    "FIXED_ETA",
    "PENALTY_LAMBDA",
    "LISA",
    "REPEATED_PROJECTIONS",
    "MORE_SAFE_RATIO",
]

#: eta_safe for ``spard_fixed_trust``: 10x the demo's LoRA learning rate, about half the step size
#: SPAG takes uncapped on this model (so the cap binds on some steps but not all).
FIXED_ETA = 0.01

#: ``spard_repeated``: at most this many projections per step (``SPAGOptimizer``'s
#: ``projection_iterations``), each from where the last landed, on the step's safe batch, until the
#: loss is at tau. Chosen before any run as "enough for the iteration to converge" (it is Newton's
#: method on one equation), not tuned on results.
REPEATED_PROJECTIONS = 10

#: ``spard_more_safe``'s safe ratio: 10x the paper's 3%, so the demo selects about as many safe rows
#: as the paper's 224 (132 of the 144-row pool under the standard and strong attacks, the whole
#: pool under the heavy one). Chosen before any sweep run, from ``spag_constraint.md``'s probes.
MORE_SAFE_RATIO = 0.3

#: ``penalty``'s lambda: 1 weighs the hinge like the task loss (the library default, untuned).
PENALTY_LAMBDA = 1.0

#: ``lisa``'s options: the paper's 1:9 alignment/fine-tuning split at the demo's scale.
LISA: dict[str, Any] = {"alignment_steps": 1, "finetune_steps": 9, "rho": 1.0}

#: PTST: train in the plain chat format, test with the safety system prompt in front of it.
_PTST = PTSTPrompts(
    system_prompt=SAFETY_SYSTEM_PROMPT, template=chat_prompt("{prompt}"), separator=" "
)


@dataclass(frozen=True)
class Method:
    """One defense (or none).

    Args:
        description: one line for the terminal.
        selection: ``dpp_select.select(method=...)`` for the safe examples, or None (none used).
        options: keyword arguments of ``wrapper``.
        wrapper: builds the optimizer from AdamW, a safety closure over the selected examples and
            the config (:mod:`.optimizers`); None fine-tunes with AdamW alone.
        mix_safe: mix the selected examples into the fine-tuning data (SafeInstr).
        eval_prompt: renders a test prompt (the chat template; PTST adds its system prompt).
        adapter: ``"lora"`` (every method but GuardSpace) or ``"guardspace"``: GuardSpace's adapters
            built from the selected safe examples (:mod:`.guardspace`).
        safe_ratio: how many safe examples to select, as a share of the fine-tuning set's size
            (capped at the pool); None: the config's ``safe_ratio`` (the paper's 3%).
    """

    description: str
    selection: str | None
    options: dict[str, Any] = field(default_factory=dict)
    wrapper: Wrapper | None = optimizers.spag
    mix_safe: bool = False
    eval_prompt: Callable[[str], str] = chat_prompt
    adapter: str = "lora"
    safe_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.adapter not in ("lora", "guardspace"):
            raise ValueError(
                f"{self.description!r}: adapter must be 'lora' or 'guardspace', got {self.adapter!r}"
            )
        uses_safe = self.wrapper is not None or self.mix_safe or self.adapter == "guardspace"
        if self.selection is None and uses_safe:
            raise ValueError(
                f"{self.description!r}: a wrapper, mix_safe or GuardSpace needs safe data; set selection"
            )
        if self.selection is not None and not uses_safe:
            raise ValueError(
                f"{self.description!r}: selected safe data is unused; set a wrapper, mix_safe or adapter='guardspace'"
            )


METHODS: dict[str, Method] = {
    "sft": Method("no defense: plain LoRA fine-tuning on the poisoned data", None, wrapper=None),
    "penalty": Method(
        f"hinge penalty L_fit + {PENALTY_LAMBDA:g} * max(L_safe - tau, 0) on the DPP subset",
        "dpp",
        {"lam": PENALTY_LAMBDA},
        optimizers.penalty,
    ),
    "safeinstr": Method(
        "SafeInstr: the DPP subset mixed into the fine-tuning data",
        "dpp",
        wrapper=None,
        mix_safe=True,
    ),
    "lisa": Method(
        "Lisa: 1 alignment step (DPP subset) per 9 fine-tuning steps, proximal rho 1",
        "dpp",
        dict(LISA),
        optimizers.lisa,
    ),
    "safegrad": Method(
        "SafeGrad: utility gradient projected off the DPP subset's gradient when they conflict",
        "dpp",
        wrapper=optimizers.safegrad,
    ),
    "ptst": Method(
        "PTST: plain fine-tuning, tested with a safety system prompt",
        None,
        wrapper=None,
        eval_prompt=_PTST.eval_prompt,
    ),
    "guardspace": Method(
        "GuardSpace: safety-subspace adapters on the DPP subset's null space, AdamW",
        "dpp",
        wrapper=None,
        adapter="guardspace",
    ),
    "guardspace_spard": Method(
        "GuardSpace adapters trained with SPAG on the DPP subset (both defenses)",
        "dpp",
        adapter="guardspace",
    ),
    "spag_random": Method("SPAG; safe subset drawn uniformly at random", "random"),
    "spag_top_relevance": Method(
        "SPAG; the safe examples most relevant to the fine-tuning set", "top_relevance"
    ),
    "spard": Method("SPAG + relevance-diversity DPP selection (SPARD, library defaults)", "dpp"),
    "spard_relative_trust": Method(
        "spard with trust_region='relative', rho=0.5 (cap: half the utility step)",
        "dpp",
        {"trust_region": "relative", "rho": 0.5},
    ),
    "spard_no_trust": Method(
        "spard with trust_region=None (no cap, paper Table 7)", "dpp", {"trust_region": None}
    ),
    "spard_fixed_trust": Method(
        f"spard with trust_region={FIXED_ETA} (a fixed eta_safe)",
        "dpp",
        {"trust_region": FIXED_ETA},
    ),
    "spard_lr_trust": Method(
        "spard with trust_region='lr' (the paper's setting: eta_safe = learning rate)",
        "dpp",
        {"trust_region": "lr"},
    ),
    "spard_repeated": Method(
        f"spard with projection_iterations={REPEATED_PROJECTIONS} (projection repeated until the loss is at tau)",
        "dpp",
        {"projection_iterations": REPEATED_PROJECTIONS},
    ),
    "spard_more_safe": Method(
        f"spard with {MORE_SAFE_RATIO:.0%} of the fine-tuning set's size as safe data (10x the paper's 3%)",
        "dpp",
        safe_ratio=MORE_SAFE_RATIO,
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
