"""The API's rules applied to a chunk of a history, column by column where that is safe.

The API validates a record with pydantic and ``collector.validation``; doing that per row would
cap an import at the API's speed. So a chunk is checked in two passes:

1. **Vectorised, conservative.** Masks over whole columns accept only rows that are plainly valid:
   names of printable text with a visible ASCII character, times and confidences finite and in
   range, a confidence given as the one form, labels short and clean. Accepting here implies the API
   accepts (the masks are stricter than the rules; ``tests/test_bulk_checks.py`` holds them to it).
2. **The API's own validation** for every other row: the very functions ``POST /v1/predictions``
   and ``POST /v1/feedback`` call, so a rejection carries the API's field and message, and a row the
   masks were unsure of (a name in another script, a vector form) is accepted exactly when the API
   would accept it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from monitor.bulk.sources import Chunk, Column, is_record_chunk, unreadable_reason
from monitor.calibration.sequence import Aggregation
from monitor.collector.schemas import Rejection
from monitor.collector.validation import (
    RESERVED_SEGMENT,
    parse_timestamp,
    prepare_feedback,
    prepare_predictions,
)
from monitor.config import LimitsConfig

__all__ = ["Labels", "Predictions", "RowRejection", "check_labels", "check_predictions"]

NAME_LIMIT = 256  # the schema's bound on model, id, segment and labels
# Rows the masks may accept: no control character, and one visible ASCII character at least (the
# API's pattern wants one non-space character; anything subtler is left to pass 2).
CONTROL = r"[\x00-\x1f\x7f]"
VISIBLE = r"[!-~]"


@dataclass(frozen=True, slots=True)
class RowRejection:
    row: int  # 1-based row of the file
    id: str | None
    field: str
    error: str


@dataclass(slots=True)
class Predictions:
    """The valid predictions of a chunk, in file order (the first of a repeated id wins)."""

    rows: np.ndarray
    model: list[str]
    prediction_id: list[str]
    segment: list[str]
    ts: np.ndarray
    input_kind: list[str]
    raw: np.ndarray
    predicted: list[str | None]
    vector: list[bytes | None]
    rejected: list[RowRejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, mask: np.ndarray) -> Predictions:
        where = np.flatnonzero(mask)
        pick = where.tolist()
        return Predictions(
            self.rows[where],
            [self.model[i] for i in pick],
            [self.prediction_id[i] for i in pick],
            [self.segment[i] for i in pick],
            self.ts[where],
            [self.input_kind[i] for i in pick],
            self.raw[where],
            [self.predicted[i] for i in pick],
            [self.vector[i] for i in pick],
            self.rejected,
        )


@dataclass(slots=True)
class Labels:
    """The valid labels of a chunk, in file order (the first label of an id wins, as in the API)."""

    rows: np.ndarray
    model: list[str]
    prediction_id: list[str]
    correct: list[bool | None]
    label: list[str | None]
    labelled_at: list[float]
    rejected: list[RowRejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


# ---------------------------------------------------------------------------------------- masks
def _names_ok(column: Column | None, limit: int, optional: bool = False) -> np.ndarray | bool:
    """Where a text column plainly satisfies the Name rule (absent counts when ``optional``)."""
    if column is None:
        return optional
    if column.form != "text" or column.arrow is None:
        return False
    import pyarrow.compute as pc

    array = column.arrow
    length = pc.utf8_length(array)
    ok = pc.and_kleene(
        pc.and_kleene(pc.greater_equal(length, 1), pc.less_equal(length, min(limit, NAME_LIMIT))),
        pc.and_kleene(
            pc.invert(pc.match_substring_regex(array, CONTROL)), pc.match_substring_regex(array, VISIBLE)
        ),
    )
    mask = _bools(ok, null_is=False)
    if optional:
        mask |= _bools(pc.is_null(array), null_is=False)
    return mask


def _not_reserved(column: Column | None) -> np.ndarray | bool:
    """The model-wide series' name is no segment (``RESERVED_SEGMENT``)."""
    if column is None or column.form != "text":
        return True
    return np.array([v != RESERVED_SEGMENT for v in column.values], dtype=bool)


def _labels_ok(column: Column | None, limit: int) -> np.ndarray | bool:
    """Where a label column (``predicted``, ``label``) is absent or plainly valid."""
    if column is None:
        return True
    if column.form == "integer":  # Arrow integers are at most 64-bit: the API's range; the text's length
        return np.array([v is None or len(str(v)) <= limit for v in column.values], dtype=bool)
    if column.form != "text" or column.arrow is None:
        return np.array([v is None for v in column.values], dtype=bool)
    import pyarrow.compute as pc

    array = column.arrow
    ok = pc.and_kleene(
        pc.less_equal(pc.utf8_length(array), min(limit, NAME_LIMIT)),
        pc.invert(pc.match_substring_regex(array, CONTROL)),
    )
    return _bools(ok, null_is=True)


def _bools(array: Any, null_is: bool) -> np.ndarray:
    return np.asarray(array.fill_null(null_is).to_numpy(zero_copy_only=False), dtype=bool)


def _times_ok(column: Column | None, now: float, limits: LimitsConfig, horizon_days: float | None) -> Any:
    if column is None or column.form != "number":
        return False
    values = column.values
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values >= 0) & (values <= now + limits.max_future_skew_seconds)
        if horizon_days is not None:
            ok &= values >= now - horizon_days * 86400.0
    if column.bad is not None:
        ok &= ~column.bad
    return ok  # a null is NaN here: not ok


def _absent(column: Column | None) -> Any:
    return True if column is None else column.absent()


def _texts(column: Column | None, n: int, default: str | None) -> list[Any]:
    if column is None:
        return [default] * n
    if column.form == "integer":
        return [None if v is None else str(v) for v in column.values]
    if default is None:
        return list(column.values)
    return [default if v is None else v for v in column.values]


# ---------------------------------------------------------------------------------- predictions
def check_predictions(
    chunk: Chunk,
    now: float,
    limits: LimitsConfig,
    aggregation_for: Callable[[str], Aggregation],
    horizon_days: float | None,
) -> Predictions:
    """The chunk's valid predictions and a rejection (field, API message) for each other row."""
    n = len(chunk)
    if is_record_chunk(chunk):
        return _predictions_by_api(chunk, np.arange(n), chunk.columns["__record__"].values, now, limits,
                                   aggregation_for, horizon_days)  # fmt: skip
    c = chunk.columns
    ok = np.ones(n, dtype=bool)
    ok &= _names_ok(c.get("model"), NAME_LIMIT)
    ok &= _names_ok(c.get("id"), min(NAME_LIMIT, limits.max_id_length))
    ok &= _names_ok(c.get("segment"), NAME_LIMIT, optional=True)
    ok &= _not_reserved(c.get("segment"))
    ok &= _times_ok(c.get("ts"), now, limits, horizon_days)
    confidence = c.get("confidence")
    if confidence is None or confidence.form != "number" or confidence.bad is not None:
        ok &= False
    else:
        with np.errstate(invalid="ignore"):
            ok &= (confidence.values >= 0.0) & (confidence.values <= 1.0)  # NaN and null: not ok
    for name in ("probs", "logits", "token_logprobs"):
        ok &= _absent(c.get(name))
    ok &= _labels_ok(c.get("predicted"), limits.max_label_length)

    fast = np.flatnonzero(ok)
    pick = fast.tolist()
    model, ids = _texts(c["model"], n, None), _texts(c["id"], n, None)
    segment = _texts(c.get("segment"), n, "default")
    predicted = _texts(c.get("predicted"), n, None)
    assert confidence is not None or not pick
    valid = Predictions(
        rows=chunk.rows[fast],
        model=[model[i] for i in pick],
        prediction_id=[ids[i] for i in pick],
        segment=[segment[i] for i in pick],
        ts=c["ts"].values[fast] if pick else np.empty(0),
        input_kind=["confidence"] * len(pick),
        raw=confidence.values[fast] if confidence is not None and pick else np.empty(0),
        predicted=[predicted[i] for i in pick],
        vector=[None] * len(pick),
    )
    slow = np.flatnonzero(~ok)
    if len(slow) == 0:
        return valid
    records = [chunk.record(int(i)) for i in slow]
    checked = _predictions_by_api(chunk, slow, records, now, limits, aggregation_for, horizon_days)
    return _merge(valid, checked)


def _predictions_by_api(
    chunk: Chunk,
    positions: np.ndarray,
    records: list[Any],
    now: float,
    limits: LimitsConfig,
    aggregation_for: Callable[[str], Aggregation],
    horizon_days: float | None,
) -> Predictions:
    rejected: list[RowRejection] = []
    items: list[Any] = []
    where: list[int] = []
    for position, record in zip(positions.tolist(), records, strict=True):
        row = int(chunk.rows[position])
        reason = unreadable_reason(record)
        if reason is not None:
            rejected.append(RowRejection(row, None, "record", reason))
        elif isinstance(record, dict) and "ts" not in record:
            rejected.append(
                RowRejection(
                    row, _id_of(record), "ts", "field required: an imported prediction needs its time"
                )
            )
        else:
            items.append(record)
            where.append(row)
    scored, rejections = prepare_predictions(items, now, limits, aggregation_for, horizon_days)
    rejected.extend(_rows_of(rejections, where))
    rejected.sort(key=lambda r: r.row)
    return Predictions(
        rows=np.array([where[s.position] for s in scored], dtype=np.int64),
        model=[s.model for s in scored],
        prediction_id=[s.prediction_id for s in scored],
        segment=[s.segment for s in scored],
        ts=np.array([s.ts for s in scored], dtype=np.float64),
        input_kind=[s.input_kind for s in scored],
        raw=np.array([s.raw_confidence for s in scored], dtype=np.float64),
        predicted=[s.predicted for s in scored],
        vector=[s.vector for s in scored],
        rejected=rejected,
    )


Result = TypeVar("Result", Predictions, Labels)


def _merge(fast: Result, slow: Result) -> Result:
    """The rows of both passes over one chunk in file order (the rejections are all the second's)."""
    if not len(fast):
        return slow
    order = np.argsort(np.concatenate([fast.rows, slow.rows]), kind="stable")
    picks = order.tolist()
    values: dict[str, Any] = {"rejected": slow.rejected}
    for column in fields(fast):
        if column.name == "rejected":
            continue
        a, b = getattr(fast, column.name), getattr(slow, column.name)
        if isinstance(a, np.ndarray):
            values[column.name] = np.concatenate([a, b])[order]
        else:
            joined = a + b
            values[column.name] = [joined[i] for i in picks]
    return type(fast)(**values)


def _rows_of(rejections: list[Rejection], rows: list[int]) -> list[RowRejection]:
    return [RowRejection(rows[r.index], r.id, r.field, r.error) for r in rejections]


def _id_of(record: Any) -> str | None:
    value = record.get("id") if isinstance(record, dict) else None
    return value[:256] if isinstance(value, str) else None


# ------------------------------------------------------------------------------------------- labels
def check_labels(chunk: Chunk, now: float, limits: LimitsConfig) -> Labels:
    """The chunk's valid labels and a rejection for each other row (``POST /v1/feedback``'s rules,
    and ``labelled_at``: when the label was known, not in the future)."""
    n = len(chunk)
    if is_record_chunk(chunk):
        return _labels_by_api(chunk, np.arange(n), chunk.columns["__record__"].values, now, limits)
    c = chunk.columns
    ok = np.ones(n, dtype=bool)
    ok &= _names_ok(c.get("model"), NAME_LIMIT)
    ok &= _names_ok(c.get("id"), min(NAME_LIMIT, limits.max_id_length))
    ok &= _times_ok(c.get("labelled_at"), now, limits, None)
    correct, label = c.get("correct"), c.get("label")
    has_correct = ~_absent(correct) if correct is not None else np.zeros(n, dtype=bool)
    has_label = ~_absent(label) if label is not None else np.zeros(n, dtype=bool)
    ok &= has_correct != has_label
    if correct is not None and correct.form != "boolean":
        ok &= ~has_correct  # CSV booleans were parsed to Python values: pass 2 judges them
    ok &= _labels_ok(label, limits.max_label_length)

    pick = np.flatnonzero(ok).tolist()
    corrects = list(correct.values) if correct is not None else [None] * n
    labels = _texts(label, n, None)
    times = c["labelled_at"].values
    valid = Labels(
        rows=chunk.rows[pick],
        model=[c["model"].values[i] for i in pick],
        prediction_id=[c["id"].values[i] for i in pick],
        correct=[corrects[i] for i in pick],
        label=[labels[i] for i in pick],
        labelled_at=[float(times[i]) for i in pick],
    )
    slow = np.flatnonzero(~ok)
    if len(slow) == 0:
        return valid
    checked = _labels_by_api(chunk, slow, [chunk.record(int(i)) for i in slow], now, limits)
    return _merge(valid, checked)


def _labels_by_api(
    chunk: Chunk, positions: np.ndarray, records: list[Any], now: float, limits: LimitsConfig
) -> Labels:
    rejected: list[RowRejection] = []
    items: list[Any] = []
    where: list[int] = []
    times: list[float] = []
    for position, record in zip(positions.tolist(), records, strict=True):
        row = int(chunk.rows[position])
        reason = unreadable_reason(record)
        if reason is not None:
            rejected.append(RowRejection(row, None, "record", reason))
            continue
        if isinstance(record, dict):
            record = dict(record)
            moment = record.pop("labelled_at", None)
            problem = _time_problem(moment, now, limits)
        else:
            moment, problem = None, None
        if problem is not None:
            # The API's fields first: a row wrong in both is named for the field a client knows.
            api = prepare_feedback([record], limits)[1]
            if api:
                rejected.extend(_rows_of(api, [row]))
            else:
                rejected.append(RowRejection(row, _id_of(record), "labelled_at", problem))
            continue
        items.append(record)
        where.append(row)
        times.append(moment if isinstance(moment, float) else _as_seconds(moment, now, limits))
    prepared, rejections = prepare_feedback(items, limits)
    rejected.extend(_rows_of(rejections, where))
    rejected.sort(key=lambda r: r.row)
    return Labels(
        rows=np.array([where[i] for i, _ in prepared], dtype=np.int64),
        model=[item.model for _, item in prepared],
        prediction_id=[item.prediction_id for _, item in prepared],
        correct=[item.correct for _, item in prepared],
        label=[item.label for _, item in prepared],
        labelled_at=[times[i] for i, _ in prepared],
        rejected=rejected,
    )


def _as_seconds(value: Any, now: float, limits: LimitsConfig) -> float:
    return parse_timestamp(value, now, limits)


def _time_problem(value: Any, now: float, limits: LimitsConfig) -> str | None:
    """Why ``labelled_at`` is unusable, or None."""
    if value is None:
        return "field required: an imported label needs the time it was known"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "must be epoch seconds or an RFC 3339 timestamp with a time zone"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number of epoch seconds"
    try:
        parse_timestamp(value, now, limits)
    except ValueError as exc:
        return str(exc)
    return None
