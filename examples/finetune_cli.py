"""The command line both fine-tuning examples accept (the paper's defaults).

Each value is checked by its ``type=`` callable as argparse reads it, so a bad value stops with
the option's name and what to change; :func:`parse_args` adds only the checks that involve two
options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEFENSES", "LIBRARY_DEFAULT", "build_parser", "parse_args"]

#: ``--defense`` choices: which adapters train (LoRA or GuardSpace's) and whether SPAG guards them.
DEFENSES = ("spard", "guardspace", "guardspace+spard")


class _LibraryDefault:
    """``--trust-region`` not given: ``SPAGOptimizer`` keeps its own default."""

    def __repr__(self) -> str:
        return "the SPAGOptimizer default"


LIBRARY_DEFAULT = _LibraryDefault()


def _option(
    flag: str,
    rule: str,
    ok: Callable[[float], bool],
    *,
    kind: type = float,
    words: dict[str, Any] | None = None,
    any_case: bool = False,
) -> Callable[[str], Any]:
    """The ``type=`` of ``flag``: one of ``words`` (read as its meaning) or a ``kind`` number for
    which ``ok`` holds; anything else stops argparse with ``rule`` and the allowed words."""
    words = words or {}
    alternatives = ", ".join(repr(word) for word in words)

    def check(value: str) -> Any:
        key = value.lower() if any_case else value
        if key in words:
            return words[key]
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {value!r}: use a number {rule}" + (f" or {alternatives}" if words else "")
            ) from None
        if not ok(number):
            raise argparse.ArgumentTypeError(
                f"{flag} must be {rule}" + (f" (or {alternatives})" if words else "")
            )
        return number

    return check


def _at_least_1(flag: str) -> Callable[[str], int]:
    return _option(flag, ">= 1", lambda n: n >= 1, kind=int)


_HARMFUL_RATIO = _option("--harmful-ratio", "in [0, 1]", lambda x: 0 <= x <= 1)
_SAFE_RATIO = _option("--safe-ratio", "in (0, 1]", lambda x: 0 < x <= 1)
_NULL_ENERGY = _option(
    "--guardspace-null-energy", "in (0, 1]", lambda x: 0 < x <= 1, words={"paper": None}
)
_TAU = _option("--tau", ">= 0", lambda x: x >= 0, words={"calibrate": "calibrate"})
_TRUST_REGION = _option(
    "--trust-region",
    "> 0",
    lambda x: x > 0,
    any_case=True,
    words={"relative": "relative", "lr": "lr", "none": None},
)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options both examples accept (the paper's defaults)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = p.add_argument_group("model and data (JSONL, one object per line)")
    data.add_argument("--model", required=True, help="local folder of a Hugging Face causal LM")
    data.add_argument("--train", required=True, help='task data: {"prompt", "answer"} rows')
    data.add_argument(
        "--safe-pool",
        help='safe pool: {"prompt", "safe", ...} rows (refusals); required unless --no-defense',
    )
    data.add_argument(
        "--harmful",
        help='attack data: {"prompt", "unsafe", ...} rows; omit to fine-tune without an attack',
    )
    data.add_argument(
        "--harmful-ratio",
        type=_HARMFUL_RATIO,
        default=0.1,
        help="attack rows injected, as a fraction of the task rows",
    )
    data.add_argument("--eval-harmful", help='harmful prompts for ASR: {"prompt", ...} rows')
    data.add_argument("--eval-utility", help='GSM8K-style test rows {"prompt", "answer"}')
    data.add_argument(
        "--train-limit", type=_at_least_1("--train-limit"), help="use only the first N task rows"
    )
    data.add_argument(
        "--eval-limit",
        type=_at_least_1("--eval-limit"),
        help="evaluate on the first N rows of each set",
    )

    defense = p.add_argument_group("SPARD defense")
    defense.add_argument(
        "--no-defense",
        action="store_true",
        help="plain fine-tuning (the 'sft' baseline): no SPAG, no selection",
    )
    defense.add_argument(
        "--defense",
        choices=DEFENSES,
        default="spard",
        help="spard: SPAG on LoRA; guardspace: GuardSpace adapters (arXiv "
        "2510.14301) from the selected safe rows instead of LoRA, AdamW; "
        "guardspace+spard: GuardSpace adapters trained with SPAG",
    )
    defense.add_argument(
        "--guardspace-null-energy",
        type=_NULL_ENERGY,
        default="0.99",
        help="GuardSpace null space: protect the directions carrying this share "
        "of the safe rows' spectral energy, or 'paper' for the eigenvalue "
        "threshold (often empty when the safe rows hold more tokens than "
        "the model's width)",
    )
    defense.add_argument(
        "--safe-ratio",
        type=_SAFE_RATIO,
        default=0.03,
        help="safe examples selected, as a fraction of the fine-tuning set",
    )
    defense.add_argument("--beta", type=float, default=4.0, help="DPP relevance weight")
    defense.add_argument(
        "--tau",
        type=_TAU,
        default="0.2",
        help="safety loss threshold, or 'calibrate': the model's mean safety "
        "loss on the selected safe data before fine-tuning",
    )
    defense.add_argument(
        "--trust-region",
        type=_TRUST_REGION,
        default=LIBRARY_DEFAULT,
        help="'relative', 'lr', 'none' or a float eta_safe",
    )
    defense.add_argument("--safe-batch-size", type=_at_least_1("--safe-batch-size"), default=8)

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument(
        "--max-steps", type=_at_least_1("--max-steps"), help="stop after this many optimizer steps"
    )
    train.add_argument("--batch-size", type=_at_least_1("--batch-size"), default=8)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument(
        "--max-length",
        type=_at_least_1("--max-length"),
        default=512,
        help="tokens per training row",
    )
    train.add_argument("--lora-r", type=_at_least_1("--lora-r"), default=32)
    train.add_argument("--lora-alpha", type=float, default=4.0)
    train.add_argument(
        "--lora-targets", nargs="+", help="module names LoRA adapts (default: found automatically)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    train.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: bfloat16 on a GPU that supports it, else float32",
    )
    train.add_argument(
        "--max-new-tokens",
        type=_at_least_1("--max-new-tokens"),
        default=256,
        help="generation length for the GSM8K evaluation (ASR: at most 64)",
    )
    train.add_argument("--eval-batch-size", type=_at_least_1("--eval-batch-size"), default=16)
    train.add_argument("--out", default="spard_run", help="folder for the adapter and metrics")
    return p


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the options; a bad value stops here with what to change."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    if args.safe_pool is None and not args.no_defense:
        parser.error("--safe-pool is required (or pass --no-defense for the sft baseline)")
    if args.no_defense and args.defense != "spard":
        parser.error(f"--no-defense and --defense {args.defense} contradict each other; give one")
    if args.max_steps is None and not args.epochs > 0:
        parser.error("--epochs must be > 0 (or pass --max-steps)")
    return args
