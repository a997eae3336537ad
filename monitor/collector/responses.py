"""Response shapes of the read and admin routes, for the OpenAPI document only.

Routes answer with pre-built JSON (no validation on the hot path); these models say what that JSON
is, so clients and fuzzers generated from ``/openapi.json`` see the truth. ``extra="allow"``: more
fields may be added (DESIGN.md), none removed. The schemathesis fuzz checks every answer against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from monitor.collector.schemas import AdviceDecision, ErrorResponse, Rejection

__all__ = [
    "AdviceOut",
    "AdviceResponse",
    "CalibrateResponse",
    "CalibratorOut",
    "CalibratorsResponse",
    "EventOut",
    "EventsResponse",
    "Health",
    "ModelDetail",
    "ModelSummary",
    "ModelsResponse",
    "Ready",
    "RecalibrationResponse",
    "ReliabilityResponse",
    "RollbackResponse",
    "SketchBatchAccepted",
    "SketchBatchStatus",
    "errors",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class SegmentSummary(_Out):
    segment: str
    predictions: int
    labelled: int
    label_coverage: float
    accuracy: float | None
    mean_confidence_labelled: float | None
    first_ts: float | None
    last_ts: float | None


class SegmentCap(_Out):
    max_segments: int
    segments_folded_into_other: int = Field(
        description="Segments folded into `other`, counted up to `segments_counted_up_to` "
        "(a bound: segment names are the client's)"
    )
    segments_counted_up_to: int


class ModelSummary(_Out):
    model: str
    predictions: int
    labelled: int
    label_coverage: float
    pending_feedback: int
    feedback_conflicts: int
    segments: list[SegmentSummary]
    segment_cap: SegmentCap


class ModelsResponse(_Out):
    models: list[ModelSummary]


class AdviceOut(_Out):
    target: float = Field(description="Precision wanted among accepted answers")
    threshold: float | None = Field(
        description="Accept at or above this calibrated confidence (None: unreachable)"
    )
    coverage: float = Field(description="Share of the window's predictions accepted")
    precision: float | None = Field(description="Realised precision of the labelled accepted answers")
    precision_lower: float | None = Field(description="Its one-sided exact lower bound at 1 - alpha")
    labelled: int
    alpha: float


class RiskCoverageOut(_Out):
    threshold: float = Field(description="Accept at or above this calibrated confidence (a bin edge)")
    coverage: float = Field(description="Share of the window's predictions accepted")
    labelled: int = Field(description="Labelled predictions accepted")
    precision: float | None = Field(description="Correct among them (None: no labelled one)")
    precision_lower: float | None = Field(description="Its one-sided exact lower bound at 1 - alpha")


class AdviceResponse(_Out):
    model: str
    segment: str
    window: str
    evaluated_at: float
    labelled: int
    advice: list[AdviceOut]
    risk_coverage: list[RiskCoverageOut] = Field(
        description="The risk-coverage curve at advice.curve's thresholds (nearest bin edges), highest first"
    )
    guarantee: str


class WindowSummary(_Out):
    model: str
    segment: str
    window: str
    score: str
    predictions: int
    labelled: int
    missing_labels: int
    label_coverage: float
    accuracy: float | None = None
    mean_confidence: float | None = None
    ece: float | None = None
    ece_ci_lower: float | None = None
    ece_ci_upper: float | None = None
    mce: float | None = None
    brier: float | None = None
    debiased_ce: float | None = None
    spiegelhalter_z: float | None = None
    spiegelhalter_p: float | None = None
    psi: float | None = None
    js_distance: float | None = None
    confidence_sum: float
    calibrator_changed: bool
    estimated_accuracy: float | None = Field(
        None,
        description="Calibrated score only: accuracy implied by the served confidences of every prediction",
    )
    estimated_accuracy_lower: float | None = Field(
        None, description="95% interval, sampling plus calibrator bias"
    )
    estimated_accuracy_upper: float | None = None
    estimate_bias: float | None = Field(None, description="Labelled part: accuracy - mean served confidence")
    estimate_check: str | None = Field(
        None,
        description='"ok", "biased" (the calibrator misses), "unchecked" (no labels), "checked on <window>"',
    )


class ActiveCalibrator(_Out):
    id: int
    segment: str
    version: str
    method: str
    activated_at: float | None


class SeriesEvidence(_Out):
    """One drift detector (docs/architecture.md, "Drift decisions")."""

    model: str
    segment: str
    score: str  # raw | calibrated | paired (served worse than raw)
    log10_evidence: float | None
    log10_threshold: float
    alarm: bool
    alarm_since: float | None
    change_point: float | None  # prediction time where the evidence run that crossed began
    labels: int  # labels bet on since the epoch
    epoch: float  # bets count predictions made from here (the serving calibrator's start)


class ModelDetail(ModelSummary):
    calibrators: list[ActiveCalibrator]
    evaluated_at: float | None
    windows: list[WindowSummary]
    evidence: list[SeriesEvidence]


class ReliabilityBin(_Out):
    bin: int
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


class ReliabilityResponse(WindowSummary):
    evaluated_at: float
    bins: list[ReliabilityBin]
    histogram: list[float]
    reference_histogram: list[float]  # empty without a reference period


class EventOut(_Out):
    id: int
    ts: float
    kind: str
    model: str | None
    segment: str | None
    calibrator_id: int | None
    payload: dict[str, Any]


class EventsResponse(_Out):
    events: list[EventOut]


class CalibratorOut(_Out):
    id: int
    model: str
    segment: str
    version: str
    method: str
    params: dict[str, Any]
    status: str
    reason: str
    metrics: dict[str, Any]
    fit_start: float | None
    fit_end: float | None
    created_at: float
    activated_at: float | None
    replaced_id: int | None


class CalibratorsResponse(_Out):
    calibrators: list[CalibratorOut]


class RollbackResponse(_Out):
    rolled_back: CalibratorOut
    restored: CalibratorOut | None


class RecalibrationResponse(_Out):
    outcome: str
    model: str
    segment: str
    reason: str
    calibrator_id: int | None
    report: dict[str, Any]


class CalibrateResult(_Out, AdviceDecision):
    index: int
    raw_confidence: float
    calibrated_confidence: float
    calibrator_version: str


class CalibrateResponse(_Out):
    results: list[CalibrateResult]
    rejected: list[Rejection]


class Health(_Out):
    status: str
    version: str


class Ready(_Out):
    status: str
    schema_revision: str | None


# Every /v1 route can answer these: no or unknown token (401), a token without the scope (403),
# a request deadline passed or the database down (503).
COMMON = (401, 403, 503)


class SketchBatchAccepted(_Out):
    batch_id: str
    status: Literal["accepted", "duplicate"]
    buckets: int
    evidence: int
    sample: int


class SketchBatchStatus(_Out):
    batch_id: str
    digest: str = Field(description="sha256 of the batch as validated")
    received_at: float
    folded_at: float | None = Field(description="When the leader added it to the buckets; null: not yet")
    first_bucket: float
    last_bucket: float


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: its own error codes plus the common ones, all ErrorResponse."""
    return {code: {"model": ErrorResponse} for code in sorted({*codes, *COMMON})}
