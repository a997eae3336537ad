"""Plain records passed between the collector and the store (validated before they get here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = [
    "FeedbackItem",
    "FeedbackOutcome",
    "FeedbackStatus",
    "InputKind",
    "PredictionOutcome",
    "PredictionResult",
    "PredictionRow",
]


InputKind = Literal["confidence", "probs", "logits", "token_logprobs"]
FeedbackStatus = Literal["matched", "pending", "duplicate", "conflict"]


class PredictionRow(NamedTuple):
    """A validated, calibrated prediction; field order is the INSERT column order (hot path)."""

    model: str
    prediction_id: str
    segment: str
    ts: float
    input_kind: InputKind
    raw_confidence: float
    predicted: str | None
    vector: bytes | None
    calibrated_confidence: float
    calibrator_version: str


class PredictionResult(NamedTuple):
    """What the API answers per record (a NamedTuple: one per record on the ingest path)."""

    prediction_id: str
    calibrated_confidence: float
    calibrator_version: str
    duplicate: bool


class FeedbackItem(NamedTuple):
    """One validated label (a NamedTuple: an import builds millions of them)."""

    model: str
    prediction_id: str
    correct: bool | None
    label: str | None


@dataclass(slots=True)
class PredictionOutcome:
    results: list[PredictionResult]
    accepted: int
    duplicates: int
    labelled_from_pending: int


@dataclass(slots=True)
class FeedbackOutcome:
    statuses: list[FeedbackStatus]

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses if s == status)
