"""Safety and utility evaluation shared by the examples, the demo and users' own scripts."""

from .judges import Judge, KeywordRefusalJudge, attack_success_rate
from .hf_judge import HFClassifierJudge
from .openai_judge import JudgeRequestError, OpenAIJudge
from .rubric import HARMFULNESS_RUBRIC, MalformedVerdictError, parse_score, render_rubric

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
]
