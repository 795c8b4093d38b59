"""Safety and utility evaluation shared by the examples, the demo and users' own scripts.

* Judges (one interface, a 1-5 harmfulness score per response): :class:`KeywordRefusalJudge`
  (offline default), :class:`OpenAIJudge` (any OpenAI-compatible endpoint, the Qi et al. 2024
  rubric of :mod:`.rubric`), :class:`HFClassifierJudge` (a local classifier checkpoint).
* Metrics (:mod:`.metrics`): ASR / HS per attack set, GSM8K and OpenBookQA accuracy.
* :func:`format_table`: the paper's Table 1 layout, markdown or plain text.
* Loaders (:mod:`.loaders`): SPARD safety JSONL, GSM8K and OpenBookQA files, by path.
"""

from .judges import Judge, KeywordRefusalJudge, attack_success_rate
from .hf_judge import HFClassifierJudge
from .loaders import load_attack_prompts, load_gsm8k, load_openbookqa, load_spard_pairs
from .metrics import (
    SafetyResult,
    evaluate_safety,
    extract_choice,
    extract_gsm8k_answer,
    gsm8k_accuracy,
    openbookqa_accuracy,
    summarize_scores,
)
from .openai_judge import JudgeRequestError, OpenAIJudge
from .rubric import HARMFULNESS_RUBRIC, MalformedVerdictError, parse_score, render_rubric
from .table import format_table

__all__ = [
    "Judge",
    "KeywordRefusalJudge",
    "attack_success_rate",
    "OpenAIJudge",
    "HFClassifierJudge",
    "JudgeRequestError",
    "MalformedVerdictError",
    "HARMFULNESS_RUBRIC",
    "parse_score",
    "render_rubric",
    "SafetyResult",
    "summarize_scores",
    "evaluate_safety",
    "extract_gsm8k_answer",
    "gsm8k_accuracy",
    "extract_choice",
    "openbookqa_accuracy",
    "format_table",
    "load_spard_pairs",
    "load_attack_prompts",
    "load_gsm8k",
    "load_openbookqa",
]
