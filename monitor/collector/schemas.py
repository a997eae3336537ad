"""Wire shapes of the API. Field names are a contract (DESIGN.md "HTTP API")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

__all__ = [
    "CONFIDENCE_FIELDS",
    "LABEL_PATTERN",
    "NAME_PATTERN",
    "CalibrateBatch",
    "CalibrateIn",
    "ErrorResponse",
    "FeedbackBatch",
    "FeedbackIn",
    "FeedbackResponse",
    "Label",
    "Name",
    "PredictionBatch",
    "PredictionIn",
    "PredictionResponse",
    "PredictionResultOut",
    "Rejection",
    "StrictFloat",
    "Timestamp",
]


StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# No control character anywhere (PostgreSQL refuses NUL in text), and at least one visible character.
NAME_PATTERN = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(strict=True, min_length=1, max_length=256, pattern=NAME_PATTERN)]
Label = (
    Annotated[str, Field(strict=True, max_length=256, pattern=LABEL_PATTERN)]
    | Annotated[int, Field(strict=True, ge=-(2**63), lt=2**63)]
)
Timestamp = Annotated[str, Field(strict=True, max_length=64)] | StrictFloat

CONFIDENCE_FIELDS = ("confidence", "probs", "logits", "token_logprobs")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class PredictionIn(_Record):
    """One prediction. Exactly one of confidence, probs, logits, token_logprobs."""

    model: Name
    id: Name
    segment: Name = "default"
    ts: Timestamp | None = Field(
        None, description="Prediction time: RFC 3339 with a time zone, or epoch seconds. Default: now."
    )
    confidence: StrictFloat | None = Field(None, description="Top-label confidence in [0, 1].")
    probs: list[StrictFloat] | None = Field(None, description="Class probabilities summing to 1.")
    logits: list[StrictFloat] | None = Field(None, description="Class logits (softmax is applied).")
    token_logprobs: list[StrictFloat] | None = Field(
        None, description="Per-token log-probabilities of an LLM answer (aggregated per model config)."
    )
    predicted: Label | None = Field(None, description="Predicted label, compared with feedback labels.")
    # "Exactly one confidence form" is checked in validation.score_prediction, which branches on the
    # form anyway: a Python model validator here costs ~20% of ingest validation time.


class CalibrateIn(_Record):
    """A score to calibrate without logging it: exactly one of confidence, probs, logits, token_logprobs."""

    model: Name
    segment: Name = "default"
    confidence: StrictFloat | None = None
    probs: list[StrictFloat] | None = None
    logits: list[StrictFloat] | None = None
    token_logprobs: list[StrictFloat] | None = None
    predicted: Label | None = None


class CalibrateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[CalibrateIn]


class FeedbackIn(_Record):
    """Ground truth for one prediction: ``correct`` or a ``label`` compared with the predicted one."""

    model: Name
    id: Name
    correct: StrictBool | None = None
    label: Label | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackIn:
        if (self.correct is None) == (self.label is None):
            raise ValueError("exactly one of correct, label is required")
        return self


class PredictionBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    predictions: list[PredictionIn]


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[FeedbackIn]


class Rejection(BaseModel):
    index: int
    id: str | None = None
    field: str
    error: str


class AdviceDecision(BaseModel):
    """What ``?target=`` adds to a scored record: calmon's accept/review advice for it."""

    action: str | None = Field(
        None, description='With ?target=: "accept" at or above the advised threshold, else "review"'
    )
    threshold: float | None = Field(
        None, description="With ?target=: the advised threshold applied (None: none)"
    )
    advice_window: str | None = Field(None, description="With ?target=: the window whose advice was applied")
    advice_reason: str | None = Field(None, description="With ?target=: why there was no threshold to apply")


class PredictionResultOut(AdviceDecision):
    index: int
    id: str
    calibrated_confidence: float
    calibrator_version: str
    duplicate: bool


class PredictionResponse(BaseModel):
    accepted: int
    duplicates: int
    labelled_from_pending: int
    rejected: list[Rejection]
    results: list[PredictionResultOut]


class FeedbackResponse(BaseModel):
    matched: int
    pending: int
    duplicates: int
    conflicts: int
    rejected: list[Rejection]


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None
    index: int | None = None
    rejected: list[Rejection] = Field(default_factory=list)
