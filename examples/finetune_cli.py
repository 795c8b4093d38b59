"""The command line both fine-tuning examples accept (the paper's defaults).

Each value is checked by its ``type=`` callable as argparse reads it, so a bad value stops with
the option's name and what to change; :func:`parse_args` adds only the checks that involve two
options.
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

__all__ = ["DEFENSES", "LIBRARY_DEFAULT", "build_parser", "parse_args"]

#: ``--defense`` choices: which adapters train (LoRA or GuardSpace's) and whether SPAG guards them.
DEFENSES = ("spard", "guardspace", "guardspace+spard")


class _LibraryDefault:
    """``--trust-region`` not given: ``SPAGOptimizer`` keeps its own default."""

    def __repr__(self) -> str:
        return "the SPAGOptimizer default"


LIBRARY_DEFAULT = _LibraryDefault()


def _number(flag: str, value: str, kind: type) -> float | int:
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {value!r}: not a number") from None


def _int_at_least_1(flag: str) -> Callable[[str], int]:
    def check(value: str) -> int:
        number = _number(flag, value, int)
        if number < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1")
        return number
    return check


def _fraction(flag: str, *, zero_ok: bool) -> Callable[[str], float]:
    """A float in [0, 1] (``zero_ok``) or (0, 1]."""
    def check(value: str) -> float:
        number = _number(flag, value, float)
        if not (0 <= number <= 1 if zero_ok else 0 < number <= 1):
            raise argparse.ArgumentTypeError(f"{flag} must be in {'[' if zero_ok else '('}0, 1]")
        return number
    return check


def _tau(value: str) -> float | str:
    """``calibrate`` or a number >= 0."""
    if value == "calibrate":
        return value
    try:
        tau = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tau {value!r}: use a number >= 0 or 'calibrate'") from None
    if not tau >= 0:
        raise argparse.ArgumentTypeError("--tau must be >= 0")
    return tau


def _null_energy(value: str) -> float | None:
    """``paper`` (None: the eigenvalue threshold) or an energy share in (0, 1]."""
    if value == "paper":
        return None
    try:
        energy = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "--guardspace-null-energy: a number in (0, 1] or 'paper'") from None
    if not 0 < energy <= 1:
        raise argparse.ArgumentTypeError("--guardspace-null-energy must be in (0, 1] (or 'paper')")
    return energy


def _trust_region(value: str) -> float | str | None:
    """``relative``, ``lr``, ``none`` or a positive float (eta_safe itself)."""
    lowered = value.lower()
    if lowered in ("relative", "lr"):
        return lowered
    if lowered == "none":
        return None
    try:
        eta = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--trust-region {value!r}: use 'relative', 'lr', 'none' or a positive number"
        ) from None
    if not eta > 0:
        raise argparse.ArgumentTypeError(f"--trust-region {value!r}: a number must be > 0")
    return eta


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
    data.add_argument("--harmful-ratio", type=_fraction("--harmful-ratio", zero_ok=True),
                      default=0.1, help="attack rows injected, as a fraction of the task rows")
    data.add_argument("--eval-harmful", help='harmful prompts for ASR: {"prompt", ...} rows')
    data.add_argument("--eval-utility", help='GSM8K-style test rows {"prompt", "answer"}')
    data.add_argument("--train-limit", type=_int_at_least_1("--train-limit"),
                      help="use only the first N task rows")
    data.add_argument("--eval-limit", type=_int_at_least_1("--eval-limit"),
                      help="evaluate on the first N rows of each set")

    defense = p.add_argument_group("SPARD defense")
    defense.add_argument("--no-defense", action="store_true",
                         help="plain fine-tuning (the 'sft' baseline): no SPAG, no selection")
    defense.add_argument("--defense", choices=DEFENSES, default="spard",
                         help="spard: SPAG on LoRA; guardspace: GuardSpace adapters (arXiv "
                              "2510.14301) from the selected safe rows instead of LoRA, AdamW; "
                              "guardspace+spard: GuardSpace adapters trained with SPAG")
    defense.add_argument("--guardspace-null-energy", type=_null_energy, default="0.99",
                         help="GuardSpace null space: protect the directions carrying this share "
                              "of the safe rows' spectral energy, or 'paper' for the eigenvalue "
                              "threshold (often empty when the safe rows hold more tokens than "
                              "the model's width)")
    defense.add_argument("--safe-ratio", type=_fraction("--safe-ratio", zero_ok=False),
                         default=0.03,
                         help="safe examples selected, as a fraction of the fine-tuning set")
    defense.add_argument("--beta", type=float, default=4.0, help="DPP relevance weight")
    defense.add_argument("--tau", type=_tau, default="0.2",
                         help="safety loss threshold, or 'calibrate': the model's mean safety "
                              "loss on the selected safe data before fine-tuning")
    defense.add_argument("--trust-region", type=_trust_region, default=LIBRARY_DEFAULT,
                         help="'relative', 'lr', 'none' or a float eta_safe")
    defense.add_argument("--safe-batch-size", type=_int_at_least_1("--safe-batch-size"), default=8)

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=_int_at_least_1("--max-steps"),
                       help="stop after this many optimizer steps")
    train.add_argument("--batch-size", type=_int_at_least_1("--batch-size"), default=8)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--max-grad-norm", type=float, default=1.0)
    train.add_argument("--max-length", type=_int_at_least_1("--max-length"), default=512,
                       help="tokens per training row")
    train.add_argument("--lora-r", type=_int_at_least_1("--lora-r"), default=32)
    train.add_argument("--lora-alpha", type=float, default=4.0)
    train.add_argument("--lora-targets", nargs="+",
                       help="module names LoRA adapts (default: found automatically)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    train.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="auto: bfloat16 on a GPU that supports it, else float32")
    train.add_argument("--max-new-tokens", type=int, default=256,
                       help="generation length for the GSM8K evaluation (ASR: at most 64)")
    train.add_argument("--eval-batch-size", type=_int_at_least_1("--eval-batch-size"), default=16)
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
