"""Answer and reasoning-step metrics; docs/metrics.md defines each one.

Nothing here executes model output: formulas are read by a small parser (``arithmetic``).
"""

from .arithmetic import Equation, ParseError, parse_equation
from .exact_match import (
    ANSWER_FORMATS,
    ANSWER_MATCHES,
    extract_answer,
    extract_choice,
    extract_last_number,
)
from .scoring import (
    METRICS_BY_FORMAT,
    PredictionsFileError,
    ScoredExample,
    aggregate,
    count_scored,
    score_file,
    score_prediction,
)
from .steps import STEP_METRICS, extract_formulas, step_metrics

__all__ = [
    "ANSWER_FORMATS",
    "ANSWER_MATCHES",
    "METRICS_BY_FORMAT",
    "STEP_METRICS",
    "Equation",
    "ParseError",
    "PredictionsFileError",
    "ScoredExample",
    "aggregate",
    "count_scored",
    "extract_answer",
    "extract_choice",
    "extract_formulas",
    "extract_last_number",
    "parse_equation",
    "score_file",
    "score_prediction",
    "step_metrics",
]
