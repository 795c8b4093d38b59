"""Safety and utility evaluation shared by the examples, the demo and users' own scripts."""

from .judges import Judge, KeywordRefusalJudge, attack_success_rate

__all__ = ["Judge", "KeywordRefusalJudge", "attack_success_rate"]
