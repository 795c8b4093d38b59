"""Every knob of the demo in one frozen dataclass (assembled from one per stage), so results.json
can record exactly what ran and the aligned-model cache can tell whether it still matches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .data import REFUSAL_STYLES

__all__ = [
    "DemoConfig",
    "SMOKE",
    "ATTACKS",
    "RECIPES",
    "parse_presets",
    "with_attack",
    "with_recipe",
]


@dataclass(frozen=True)
class AlignmentSettings:
    """Stage 1, the tiny Llama aligned from scratch: everything the aligned model depends on, so
    exactly these fields key its cache (:meth:`DemoConfig.alignment_fields`)."""

    seed: int = 0
    hidden: int = 64  # the tiny Llama's width and depth (``model.ModelSize``)
    layers: int = 2
    align_problems: int = 3000
    align_benign: int = 300
    align_epochs: int = 12
    align_lr: float = 3e-3
    align_batch: int = 32
    # The refusals the aligned model learns (``data.REFUSAL_STYLES``): one fixed sentence, or a
    # wording per harmful category. Left out of the records while ``fixed`` (``DemoConfig``), so the
    # keys of every aligned model and sweep cell made before it existed stay the same.
    refusal_style: str = "fixed"


@dataclass(frozen=True)
class AttackSettings:
    """Stage 2, the harmful fine-tuning attack (LoRA); by default the paper's 10% poisoning. The
    presets of :data:`ATTACKS` change some of these fields and nothing else."""

    finetune_problems: int = 400
    harmful_ratio: float = 0.1
    finetune_epochs: int = 3
    finetune_lr: float = 1e-3
    finetune_batch: int = 16
    lora_rank: int = 8
    lora_alpha: int = 16


@dataclass(frozen=True)
class DefenseSettings:
    """SPAG and the safe-data selection (the paper: 3% of the fine-tuning set, beta 4)."""

    safe_ratio: float = 0.03
    beta: float = 4.0
    # The aligned model's refusal loss is ~0.001 (one fixed refusal sentence), far below the
    # paper's tau = 0.2 for real models; at 0.2 a refusal can already lose its first token.
    tau: float = 0.01
    safety_batch: int = 8


# The stages' bases are listed last-first because a dataclass puts its bases' fields in reverse
# MRO order: the fields (``to_dict``, results.json) stay in stage order, then the evaluation.
@dataclass(frozen=True)
class DemoConfig(DefenseSettings, AttackSettings, AlignmentSettings):
    """Every knob of the demo, stage by stage but flat (``config.align_lr``)."""

    eval_problems: int = 200  # held-out evaluation

    def __post_init__(self) -> None:
        if not 0.0 < self.harmful_ratio <= 1.0:
            raise ValueError(f"harmful_ratio must be in (0, 1], got {self.harmful_ratio}")
        if not 0.0 < self.safe_ratio <= 1.0:
            raise ValueError(f"safe_ratio must be in (0, 1], got {self.safe_ratio}")
        for name in (
            "align_problems",
            "align_epochs",
            "finetune_problems",
            "finetune_epochs",
            "eval_problems",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.refusal_style not in REFUSAL_STYLES:
            raise ValueError(
                f"refusal_style must be one of {', '.join(REFUSAL_STYLES)}, got {self.refusal_style!r}"
            )

    def alignment_fields(self) -> dict[str, Any]:
        """The fields stage 1 depends on: the cache key of the aligned model."""
        return _recorded({f.name: getattr(self, f.name) for f in fields(AlignmentSettings)})

    def to_dict(self) -> dict[str, Any]:
        return _recorded(asdict(self))


def _recorded(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without ``refusal_style`` when it is the default (see ``AlignmentSettings``)."""
    if values.get("refusal_style") == "fixed":
        values = {k: v for k, v in values.items() if k != "refusal_style"}
    return values


#: A few seconds end to end: for the tests, not for conclusions.
SMOKE = replace(
    DemoConfig(),
    align_problems=200,
    align_benign=40,
    align_epochs=2,
    finetune_problems=40,
    finetune_epochs=1,
    eval_problems=20,
)


#: The attack presets: what changes in stage 2 (every other field, the aligned model included, is
#: shared). Fixed before any defense was compared on them, and never tuned to favour one:
#:
#: * ``standard``: the paper's 10% poisoning, 3 epochs at lr 1e-3 (the demo as it always ran).
#: * ``strong``: the same 10% poisoned data, trained harder (10 epochs at lr 3e-3): the attacker
#:   spends more optimisation, not more harmful rows.
#: * ``heavy``: more poison (25% harmful rows) for 10 epochs at the standard lr 1e-3: the attacker
#:   brings more harmful data.
#:
#: ``strong`` and ``heavy`` are the two stronger settings first tried by hand when the standard
#: attack could not tell the defenses apart (plain fine-tuning reached ASR 1.00 under both); they
#: are kept exactly as tried, one along the optimisation axis and one along the data axis.
ATTACKS: dict[str, dict[str, Any]] = {
    "standard": {"harmful_ratio": 0.1, "finetune_epochs": 3, "finetune_lr": 1e-3},
    "strong": {"harmful_ratio": 0.1, "finetune_epochs": 10, "finetune_lr": 3e-3},
    "heavy": {"harmful_ratio": 0.25, "finetune_epochs": 10, "finetune_lr": 1e-3},
}


def with_attack(config: DemoConfig, attack: str) -> DemoConfig:
    """``config`` with the stage-2 fields of the attack preset ``attack`` (see :data:`ATTACKS`)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    return replace(config, **ATTACKS[attack])


#: Aligned-model recipes: what stage 1 changes, so that SPARD is measured over a population of
#: aligned models rather than one. Each differs in something a user's model differs in:
#:
#: * ``base``: the demo's model (2 layers of width 64, 12 epochs, one fixed refusal sentence).
#: * ``wide``: width and depth (3 layers of width 96).
#: * ``short``: alignment length (4 epochs instead of 12: a less settled aligned model).
#: * ``varied``: a refusal wording per harmful category (six wordings, six judge phrases).
#:
#: Fixed before any defense was compared on them.
RECIPES: dict[str, dict[str, Any]] = {
    "base": {},
    "wide": {"hidden": 96, "layers": 3},
    "short": {"align_epochs": 4},
    "varied": {"refusal_style": "varied"},
}


def with_recipe(config: DemoConfig, recipe: str) -> DemoConfig:
    """``config`` with the stage-1 fields of the aligned-model recipe ``recipe`` (:data:`RECIPES`)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return replace(config, **RECIPES[recipe])


def parse_presets(spec: str, presets: dict[str, dict[str, Any]], what: str) -> list[str]:
    """The comma-separated preset names in ``spec`` (:data:`ATTACKS` or :data:`RECIPES`), in the
    order given, without duplicates; ValueError naming the unknown ones (``what``, e.g.
    ``"attack(s)"``) and the choices, or when none is given."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in presets]
    if unknown or not names:
        raise ValueError(f"unknown or no {what} {unknown}; choose from {', '.join(presets)}")
    return names
