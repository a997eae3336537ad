"""Top-label confidence from a probability or logit vector (pure, dependency-free for the ingest path)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "softmax_max",
    "top_label",
    "validate_logits",
    "validate_probs",
]


def validate_probs(probs: Sequence[float], tolerance: float) -> None:
    """Raise ValueError unless ``probs`` is a finite distribution over >= 2 classes."""
    if len(probs) < 2:
        raise ValueError("needs at least 2 classes")
    for position, value in enumerate(probs):
        if not math.isfinite(value) or value < 0.0 or value > 1.0:
            raise ValueError(f"[{position}] = {value} is not a probability in [0, 1]")
    total = math.fsum(probs)
    if abs(total - 1.0) > tolerance:
        raise ValueError(f"probabilities sum to {total:.6g}, not 1 (tolerance {tolerance:g})")


def validate_logits(logits: Sequence[float]) -> None:
    if len(logits) < 2:
        raise ValueError("needs at least 2 classes")
    for position, value in enumerate(logits):
        if not math.isfinite(value):
            raise ValueError(f"[{position}] is not finite")


def top_label(values: Sequence[float]) -> int:
    """Index of the largest value (first one on ties, like numpy.argmax)."""
    best = 0
    for position in range(1, len(values)):
        if values[position] > values[best]:
            best = position
    return best


def softmax_max(logits: Sequence[float]) -> float:
    """max(softmax(logits)) computed stably: 1 / sum(exp(z_i - z_max))."""
    peak = max(logits)
    return 1.0 / math.fsum(math.exp(z - peak) for z in logits)
