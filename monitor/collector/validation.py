"""Turn a request body into validated records, and every defect into a message naming index and field.

A batch is validated in one pass through pydantic (fast path). Only when that fails are records
re-validated one by one, so the valid ones of a mixed batch are kept and each bad one is named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from monitor.calibration.sequence import Aggregation, sequence_confidence, validate_token_logprobs
from monitor.calibration.vectors import softmax_max, top_label, validate_logits, validate_probs
from monitor.collector.plain import PlainRules, plain_prediction
from monitor.collector.schemas import CONFIDENCE_FIELDS, CalibrateIn, FeedbackIn, PredictionIn, Rejection
from monitor.config import LimitsConfig
from monitor.store.records import FeedbackItem, InputKind
from monitor.store.vectors import FLOAT32_MAX, pack_vector
from monitor.vocabulary import MODEL_WIDE

__all__ = [
    "CALIBRATE",
    "FEEDBACK",
    "PREDICTIONS",
    "RESERVED_SEGMENT",
    "BatchError",
    "Record",
    "ScoredInput",
    "model_cap_error",
    "over_model_cap",
    "parse_body",
    "parse_timestamp",
    "prepare_calibration",
    "prepare_feedback",
    "prepare_predictions",
    "raw_confidence",
    "score_prediction",
    "validate_records",
]


Record = TypeVar("Record", bound=BaseModel)
RESERVED_SEGMENT = MODEL_WIDE  # the model-wide series of every window


class BatchError(Exception):
    """The request as a whole is unusable (HTTP status, the field, a message)."""

    def __init__(self, status: int, field: str, message: str, rejected: list[Rejection] | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.rejected = rejected or []


class ScoredInput(NamedTuple):
    """A prediction after validation, before calibration (a NamedTuple: cheap on the hot path)."""

    position: int  # index of the record in the request batch
    model: str
    prediction_id: str
    segment: str
    ts: float
    input_kind: InputKind
    raw_confidence: float
    predicted: str | None
    vector: bytes | None


def parse_body(body: bytes, key: str, limits: LimitsConfig) -> list[Any]:
    """The list under ``key`` of a JSON object body, with batch-level checks."""
    if len(body) > limits.max_body_bytes:
        raise BatchError(413, "body", f"request body exceeds {limits.max_body_bytes} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson follows RFC 8259 strictly; Python clients emit NaN/Infinity by default. Parse those
        # leniently so the record holding them is named instead of the whole body being refused.
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BatchError(400, "body", f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BatchError(400, "body", "body nests deeper than any record can") from None
    if not isinstance(data, dict):
        raise BatchError(422, "body", f"body must be a JSON object with a {key!r} list")
    unknown = sorted(set(data) - {key})
    if unknown:
        raise BatchError(422, unknown[0], f"unknown top-level field {unknown[0]!r}; expected only {key!r}")
    if key not in data:
        raise BatchError(422, key, f"missing required field {key!r}")
    items = data[key]
    if not isinstance(items, list):
        raise BatchError(422, key, f"{key!r} must be a list")
    if len(items) > limits.max_batch_records:
        raise BatchError(
            413, key, f"batch of {len(items)} records exceeds the limit of {limits.max_batch_records}"
        )
    return items


def _field_of(loc: Sequence[int | str]) -> str:
    if not loc:
        return "record"
    name = str(loc[0])
    for part in loc[1:]:
        if isinstance(part, int):
            name += f"[{part}]"
    return name


# What a field expects, said in the words of the API when pydantic's own message would mislead
# (a label given as 2**70 fails every member of the union; the first member's message is "a string").
EXPECTED = {
    "model": "a string of 1 to 256 characters, not blank, without control characters",
    "id": "a string of 1 to 256 characters, not blank, without control characters",
    "segment": "a string of 1 to 256 characters, not blank, without control characters",
    "predicted": "a string (at most 256 characters, no control characters) or a 64-bit integer",
    "label": "a string (at most 256 characters, no control characters) or a 64-bit integer",
}


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown field {safe_text(str(error['loc'][0]))!r}"
    if error["type"] == "missing":
        return "field required"
    loc: tuple[Any, ...] = tuple(error.get("loc") or ())
    field = str(loc[0]) if loc else ""
    # A pattern mismatch would quote the regex; a union failure (a label of 2**70) names only the
    # first member: say what the field takes instead.
    if field in EXPECTED and (error["type"] == "string_pattern_mismatch" or len(loc) > 1):
        return f"must be {EXPECTED[field]}"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def safe_text(value: str) -> str:
    """``value`` as UTF-8 can carry it: a lone surrogate (valid in lenient JSON, not in UTF-8) becomes
    its escape, so echoing a rejected id never breaks the response."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _guess_id(item: Any) -> str | None:
    if isinstance(item, dict):
        value = item.get("id")
        if isinstance(value, str):
            return safe_text(value[:256])
    return None


def _rejection_from(index: int, item: Any, exc: ValidationError) -> Rejection:
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    # A model-level validator error has an empty loc: it is about which confidence field was given.
    if loc:
        field = _field_of(loc)
    elif error["type"] == "value_error":
        field = _model_level_field(error, item)
    else:  # not an object at all
        field = "record"
    return Rejection(index=index, id=_guess_id(item), field=field, error=_message(dict(error)))


def _model_level_field(error: Any, item: Any) -> str:
    """The field a record-level rule points at (only FeedbackIn has one: correct vs label)."""
    return "label" if isinstance(item, dict) and "correct" in item else "correct"


def validate_records(
    items: list[Any], adapter: TypeAdapter[list[Record]], single: type[Record]
) -> tuple[list[tuple[int, Record]], list[Rejection]]:
    """Valid records with their batch index, and one Rejection per invalid record."""
    try:
        return list(enumerate(adapter.validate_python(items))), []
    except ValidationError:
        pass
    valid: list[tuple[int, Record]] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, single.model_validate(item)))
        except ValidationError as exc:
            rejected.append(_rejection_from(index, item, exc))
    return valid, rejected


def parse_timestamp(
    value: str | float | None, now: float, limits: LimitsConfig, horizon_days: float | None = None
) -> float:
    if value is None:
        return now
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from None
        if moment.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone; add 'Z' or an offset")
        ts = moment.timestamp()
    else:
        ts = float(value)
    if ts < 0:
        raise ValueError("timestamp is before 1970")
    if ts > now + limits.max_future_skew_seconds:
        raise ValueError(f"timestamp is more than {limits.max_future_skew_seconds:g} s in the future")
    if horizon_days is not None and ts < now - horizon_days * 86400.0:
        # Accepting it would be a silent loss: retention deletes raw rows older than raw_days, so
        # its labels could never join it.
        raise ValueError(
            f"timestamp is older than the accepted horizon of {horizon_days:g} days (retention.raw_days)"
        )
    return ts


def score_prediction(
    index: int,
    record: PredictionIn,
    now: float,
    limits: LimitsConfig,
    aggregation_for: Callable[[str], Aggregation],
    horizon_days: float | None = None,
) -> ScoredInput:
    """Apply the config-dependent checks and reduce the given form to one raw confidence.

    Raises ``_FieldError`` naming the field.
    """
    if len(record.id) > limits.max_id_length:
        raise _FieldError("id", f"longer than {limits.max_id_length} characters")
    if record.segment == RESERVED_SEGMENT:
        raise _FieldError("segment", f"{RESERVED_SEGMENT!r} is reserved for the model-wide series")
    predicted = None if record.predicted is None else str(record.predicted)
    if predicted is not None and len(predicted) > limits.max_label_length:
        raise _FieldError("predicted", f"longer than {limits.max_label_length} characters")
    try:
        ts = parse_timestamp(record.ts, now, limits, horizon_days)
    except ValueError as exc:
        raise _FieldError("ts", str(exc)) from None

    kind, raw, predicted, vector = raw_confidence(record, predicted, limits, aggregation_for)
    return ScoredInput(index, record.model, record.id, record.segment, ts, kind, raw, predicted, vector)


def raw_confidence(
    record: PredictionIn | CalibrateIn,
    predicted: str | None,
    limits: LimitsConfig,
    aggregation_for: Callable[[str], Aggregation],
) -> tuple[InputKind, float, str | None, bytes | None]:
    """The one given confidence form reduced to (kind, raw confidence, predicted label, stored vector).

    Raises ``_FieldError`` naming the field.
    """
    given = [name for name in CONFIDENCE_FIELDS if getattr(record, name) is not None]
    if len(given) != 1:
        field = given[1] if given else "confidence"
        got = f"; got {', '.join(given)}" if given else ""
        raise _FieldError(field, f"exactly one of {', '.join(CONFIDENCE_FIELDS)} is required{got}")
    vector: bytes | None = None
    kind: InputKind
    if record.confidence is not None:
        kind, raw = "confidence", record.confidence
        if not 0.0 <= raw <= 1.0:
            raise _FieldError("confidence", f"{raw} is outside [0, 1]")
    elif record.probs is not None:
        kind, values = "probs", record.probs
        _check_length("probs", values, limits)
        try:
            validate_probs(values, limits.probs_sum_tolerance)
        except ValueError as exc:
            raise _FieldError("probs", str(exc)) from None
        best = top_label(values)
        raw = min(1.0, values[best])
        predicted = predicted if predicted is not None else str(best)
        vector = pack_vector(values)
    elif record.logits is not None:
        kind, values = "logits", record.logits
        _check_length("logits", values, limits)
        _check_storable("logits", values)
        try:
            validate_logits(values)
        except ValueError as exc:
            raise _FieldError("logits", str(exc)) from None
        raw = softmax_max(values)
        predicted = predicted if predicted is not None else str(top_label(values))
        vector = pack_vector(values)
    else:
        assert record.token_logprobs is not None
        kind, values = "token_logprobs", record.token_logprobs
        _check_length("token_logprobs", values, limits)
        try:
            validate_token_logprobs(values)
        except ValueError as exc:
            raise _FieldError("token_logprobs", str(exc)) from None
        raw = sequence_confidence(values, aggregation_for(record.model))
    if not math.isfinite(raw):
        raise _FieldError(kind, "does not yield a finite confidence")
    return kind, raw, predicted, vector


def _check_storable(field: str, values: Sequence[float]) -> None:
    """Vectors are stored as float32: a finite float64 beyond its range would overflow on packing."""
    for position, value in enumerate(values):
        if not -FLOAT32_MAX <= value <= FLOAT32_MAX:
            raise _FieldError(
                f"{field}[{position}]", f"{value:g} is beyond ±{FLOAT32_MAX:.4g} (stored as float32)"
            )


def _check_length(field: str, values: Sequence[float], limits: LimitsConfig) -> None:
    if len(values) > limits.max_vector_length:
        raise _FieldError(field, f"{len(values)} values exceed the limit of {limits.max_vector_length}")


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def prepare_predictions(
    items: list[Any],
    now: float,
    limits: LimitsConfig,
    aggregation_for: Callable[[str], Aggregation],
    horizon_days: float | None = None,
) -> tuple[list[ScoredInput], list[Rejection]]:
    rules = PlainRules(now, limits, horizon_days)
    scored: list[ScoredInput] = []
    others: list[int] = []
    for index, item in enumerate(items):
        plain = plain_prediction(item, now, rules)
        if plain is None:
            others.append(index)
        else:
            model, pid, segment, ts, confidence, predicted = plain
            scored.append(
                ScoredInput(index, model, pid, segment, ts, "confidence", confidence, predicted, None)
            )
    if not others:
        return scored, []
    # The others take the full path (pydantic, then the config-dependent checks), indexed as sent.
    valid, found = validate_records([items[i] for i in others], PREDICTIONS, PredictionIn)
    rejected = [r.model_copy(update={"index": others[r.index]}) for r in found]
    for position, record in valid:
        index = others[position]
        try:
            scored.append(score_prediction(index, record, now, limits, aggregation_for, horizon_days))
        except _FieldError as exc:
            rejected.append(Rejection(index=index, id=record.id, field=exc.field, error=exc.message))
    scored.sort(key=lambda s: s.position)
    rejected.sort(key=lambda r: r.index)
    return scored, rejected


def prepare_feedback(
    items: list[Any], limits: LimitsConfig
) -> tuple[list[tuple[int, FeedbackItem]], list[Rejection]]:
    valid, rejected = validate_records(items, FEEDBACK, FeedbackIn)
    prepared: list[tuple[int, FeedbackItem]] = []
    for index, record in valid:
        label = None if record.label is None else str(record.label)
        if len(record.id) > limits.max_id_length:
            rejected.append(
                Rejection(
                    index=index,
                    id=record.id[:256],
                    field="id",
                    error=f"longer than {limits.max_id_length} characters",
                )
            )
            continue
        if label is not None and len(label) > limits.max_label_length:
            rejected.append(
                Rejection(
                    index=index,
                    id=record.id,
                    field="label",
                    error=f"longer than {limits.max_label_length} characters",
                )
            )
            continue
        prepared.append((index, FeedbackItem(record.model, record.id, record.correct, label)))
    rejected.sort(key=lambda r: r.index)
    return prepared, rejected


PREDICTIONS: TypeAdapter[list[PredictionIn]] = TypeAdapter(list[PredictionIn])
FEEDBACK: TypeAdapter[list[FeedbackIn]] = TypeAdapter(list[FeedbackIn])


CALIBRATE: TypeAdapter[list[CalibrateIn]] = TypeAdapter(list[CalibrateIn])


def prepare_calibration(
    items: list[Any], limits: LimitsConfig, aggregation_for: Callable[[str], Aggregation]
) -> tuple[list[tuple[int, CalibrateIn, float, InputKind, bytes | None]], list[Rejection]]:
    """Valid records with their raw confidence, input kind and vector; one Rejection per invalid one."""
    valid, rejected = validate_records(items, CALIBRATE, CalibrateIn)
    prepared: list[tuple[int, CalibrateIn, float, InputKind, bytes | None]] = []
    for index, record in valid:
        try:
            predicted = None if record.predicted is None else str(record.predicted)
            kind, raw, _, vector = raw_confidence(record, predicted, limits, aggregation_for)
        except _FieldError as exc:
            rejected.append(Rejection(index=index, field=exc.field, error=exc.message))
            continue
        prepared.append((index, record, raw, kind, vector))
    rejected.sort(key=lambda r: r.index)
    return prepared, rejected


def over_model_cap(new: Sequence[str], known: int, cap: int) -> set[str]:
    """The new models (in order of appearance) refused by ``limits.max_models`` with ``known``
    models tracked: the API's rule, and the import's."""
    return set(new[max(0, cap - known) :])


def model_cap_error(cap: int, model: str) -> str:
    return f"calmon tracks limits.max_models = {cap} models; {model!r} would be one more"
