"""Records as the API spells them, built cheaply on the app's thread and encoded on the sender's.

The app's thread only builds a dict (a few microseconds); everything that costs more, such as
encoding NumPy values or checking for NaN, happens in the background where a bad record is dropped
and counted instead of raising into the inference path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "CONFIDENCE_FIELDS",
    "Aggregation",
    "encode",
    "feedback_record",
    "prediction_record",
    "raw_confidence",
    "score_record",
]

CONFIDENCE_FIELDS = ("confidence", "probs", "logits", "token_logprobs")
Aggregation = Literal["mean", "sum", "min"]


def _scores(
    record: dict[str, Any],
    confidence: float | None,
    probs: Sequence[float] | None,
    logits: Sequence[float] | None,
    token_logprobs: Sequence[float] | None,
) -> dict[str, Any]:
    forms = 0
    if confidence is not None:
        record["confidence"] = confidence
        forms += 1
    if probs is not None:
        record["probs"] = probs
        forms += 1
    if logits is not None:
        record["logits"] = logits
        forms += 1
    if token_logprobs is not None:
        record["token_logprobs"] = token_logprobs
        forms += 1
    if forms != 1:
        raise TypeError(f"exactly one of {', '.join(CONFIDENCE_FIELDS)} is required, got {forms}")
    return record


def prediction_record(
    model: str,
    id: str,
    ts: float | datetime,
    segment: str | None,
    predicted: str | int | None,
    confidence: float | None,
    probs: Sequence[float] | None,
    logits: Sequence[float] | None,
    token_logprobs: Sequence[float] | None,
) -> dict[str, Any]:
    """A ``/v1/predictions`` record: a scored record with its id and time; raises TypeError only for
    a call that can never be right."""
    record = score_record(model, segment, predicted, confidence, probs, logits, token_logprobs)
    record["id"], record["ts"] = id, ts
    return record


def score_record(
    model: str,
    segment: str | None,
    predicted: str | int | None,
    confidence: float | None,
    probs: Sequence[float] | None,
    logits: Sequence[float] | None,
    token_logprobs: Sequence[float] | None,
) -> dict[str, Any]:
    """A ``/v1/calibrate`` record (no id, no time: nothing is logged)."""
    record: dict[str, Any] = {"model": model}
    if segment is not None:
        record["segment"] = segment
    if predicted is not None:
        record["predicted"] = predicted
    return _scores(record, confidence, probs, logits, token_logprobs)


def feedback_record(model: str, id: str, correct: bool | None, label: str | int | None) -> dict[str, Any]:
    if (correct is None) == (label is None):
        raise TypeError("exactly one of correct, label is required")
    if correct is not None:
        return {"model": model, "id": id, "correct": correct}
    return {"model": model, "id": id, "label": label}


def _plain(value: Any) -> Any:
    """JSON for what apps pass without thinking: NumPy/PyTorch scalars and arrays, datetimes."""
    if isinstance(value, datetime):
        return value.timestamp() if value.tzinfo is not None else value.isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(record: dict[str, Any]) -> bytes:
    """One record as compact JSON; ValueError for NaN/infinity, TypeError for a value JSON cannot hold."""
    return json.dumps(record, allow_nan=False, default=_plain, separators=(",", ":")).encode()


def _softmax_max(logits: Sequence[float]) -> float:
    top = max(logits)
    return 1.0 / math.fsum(math.exp(v - top) for v in logits)


def raw_confidence(record: dict[str, Any], aggregation: Aggregation = "mean") -> float:
    """The uncalibrated top-label confidence, computed as calmon would: the fallback when calmon
    cannot be reached. ``aggregation`` must match the model's ``token_aggregation`` in calmon."""
    form = next(field for field in CONFIDENCE_FIELDS if field in record)
    values = record[form]
    if not isinstance(values, float | int | list | tuple):
        values = _plain(values)
    if form == "confidence":
        return float(values)
    if form == "probs":
        return float(max(values))
    if form == "logits":
        return _softmax_max([float(v) for v in values])
    logprobs = [float(v) for v in values]
    if aggregation == "sum":
        total = math.fsum(logprobs)
    elif aggregation == "min":
        total = min(logprobs)
    else:
        total = math.fsum(logprobs) / len(logprobs)
    return min(1.0, math.exp(min(total, 0.0)))
