"""Token log-probabilities -> one sequence confidence.

An LLM answer is a sequence; its confidence must be one number in [0, 1]. Three aggregations:

* ``mean``: geometric-mean token probability, ``exp(mean(logp))``; length-neutral, the default.
* ``sum``:  sequence probability, ``exp(sum(logp))``; penalises long answers.
* ``min``:  the least confident token, ``exp(min(logp))``; "weakest link".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "AGGREGATIONS",
    "LOGPROB_TOLERANCE",
    "Aggregation",
    "sequence_confidence",
    "validate_token_logprobs",
]


Aggregation = Literal["mean", "sum", "min"]
AGGREGATIONS: tuple[Aggregation, ...] = ("mean", "sum", "min")
# A log-probability is <= 0; tokenizer round-off can produce tiny positive values (e.g. 1e-7).
LOGPROB_TOLERANCE = 1e-6


def validate_token_logprobs(logprobs: Sequence[float]) -> None:
    """Raise ValueError unless the list is non-empty, finite and <= 0 (up to round-off)."""
    if len(logprobs) == 0:
        raise ValueError("token_logprobs must not be empty")
    for position, value in enumerate(logprobs):
        if not math.isfinite(value):
            raise ValueError(f"token_logprobs[{position}] is not finite")
        if value > LOGPROB_TOLERANCE:
            raise ValueError(f"token_logprobs[{position}] = {value} is positive; log-probabilities are <= 0")


def sequence_confidence(logprobs: Sequence[float], method: Aggregation = "mean") -> float:
    """Aggregate token log-probabilities into a confidence in [0, 1]."""
    validate_token_logprobs(logprobs)
    if method == "mean":
        total = math.fsum(logprobs) / len(logprobs)
    elif method == "sum":
        total = math.fsum(logprobs)
    elif method == "min":
        total = min(logprobs)
    else:
        raise ValueError(f"unknown token aggregation {method!r}; expected one of {AGGREGATIONS}")
    return min(1.0, math.exp(min(total, 0.0)))
