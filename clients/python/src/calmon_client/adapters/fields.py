"""The keyword arguments an adapter returns, typed for ``log_prediction(**fields)``."""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["ScoreFields", "field"]


class ScoreFields(TypedDict, total=False):
    confidence: float
    probs: list[float]
    logits: list[float]
    token_logprobs: list[float]
    predicted: str | int


def field(obj: Any, name: str) -> Any:
    """``obj.name`` for SDK objects (pydantic models), ``obj[name]`` for parsed JSON."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)
