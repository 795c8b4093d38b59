"""Safety and utility evaluation shared by the examples, the demo and users' own scripts.

* Judges (one interface, a 1-5 harmfulness score per response): :class:`KeywordRefusalJudge`
  (offline default), :class:`OpenAIJudge` (any OpenAI-compatible endpoint, the Qi et al. 2024
  rubric of :mod:`.rubric`), :class:`HFClassifierJudge` (a local classifier checkpoint).
* Metrics (:mod:`.metrics`): ASR / HS per attack set, GSM8K and OpenBookQA accuracy.
* :func:`generate_responses` (:mod:`.generation`): greedy responses to a list of prompts, the
  input of the judges and accuracy metrics.
* :func:`format_table`: the paper's Table 1 layout, markdown or plain text.
* Loaders (:mod:`.loaders`): SPARD safety JSONL, GSM8K and OpenBookQA files, by path.
"""

from . import generation, hf_judge, judges, loaders, metrics, openai_judge, rubric, table
from .generation import *  # noqa: F403
from .hf_judge import *  # noqa: F403
from .judges import *  # noqa: F403
from .loaders import *  # noqa: F403
from .metrics import *  # noqa: F403
from .openai_judge import *  # noqa: F403
from .rubric import *  # noqa: F403
from .table import *  # noqa: F403

# Each submodule's ``__all__`` is its public API; the package exports them all, in the order of
# the list above (judges, rubric, metrics, generation, table, loaders).
__all__ = [
    *judges.__all__,
    *openai_judge.__all__,
    *hf_judge.__all__,
    *rubric.__all__,
    *metrics.__all__,
    *generation.__all__,
    *table.__all__,
    *loaders.__all__,
]
