"""The column checks accept a row only where the API accepts it, with the same values, and reject
the others with the API's own field and message: random chunks against ``prepare_predictions`` and
``prepare_feedback`` row by row."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.bulk.checks import check_labels, check_predictions
from monitor.bulk.sources import Chunk, _arrow_column
from monitor.calibration.sequence import Aggregation
from monitor.collector.validation import prepare_feedback, prepare_predictions
from monitor.config import LimitsConfig

NOW = time.time()
LIMITS = LimitsConfig(max_id_length=40, max_label_length=12)
HORIZON = 30.0

# Names that sit on every edge of the Name rule: blank, unicode spaces, control characters, long.
names = st.one_of(
    st.sampled_from(
        ["m", "clf", "模型", "café", " x ", "", "   ", "\u3000", "\u00a0a", "a\x01", "\x7f", "*", "a\tb"]
    ),
    st.sampled_from(["i" * 40, "i" * 41, "l" * 12, "l" * 13, "n" * 256, "n" * 257]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=45),
    st.text(alphabet="ab \u2003", min_size=0, max_size=3),
)
times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NOW - 60, NOW - 29 * 86400, NOW - 31 * 86400, NOW + 3000, NOW + 4000, -1.0, 0.0]),
)
confidences = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
labels = st.one_of(st.none(), names, st.text(min_size=10, max_size=14))


def aggregation(model: str) -> Aggregation:
    return "mean"


def chunk_of(rows: list[dict[str, Any]], schema: pa.Schema) -> Chunk:
    import numpy as np

    data = pa.table({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)
    columns = {name: _arrow_column(name, data.column(name).combine_chunks()) for name in data.column_names}
    return Chunk(np.arange(1, len(rows) + 1, dtype=np.int64), columns)


PREDICTIONS = pa.schema(
    [("model", pa.string()), ("id", pa.string()), ("segment", pa.string()), ("ts", pa.float64()),
     ("confidence", pa.float64()), ("probs", pa.list_(pa.float64())), ("predicted", pa.string())]
)  # fmt: skip


@st.composite
def prediction(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"model": draw(names), "id": draw(names), "ts": draw(times)}
    if draw(st.booleans()):
        row["segment"] = draw(names)
    form = draw(st.sampled_from(["confidence", "confidence", "probs", "both", "none"]))
    if form in ("confidence", "both"):
        row["confidence"] = draw(confidences)
    if form in ("probs", "both"):
        row["probs"] = draw(st.sampled_from([[0.3, 0.7], [0.5, 0.6], [1.0], [0.2, 0.2, 0.6]]))
    label = draw(labels)
    if label is not None:
        row["predicted"] = label
    return row


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(prediction(), min_size=1, max_size=25))
def test_prediction_checks_agree_with_the_api_row_for_row(rows: list[dict[str, Any]]) -> None:
    checked = check_predictions(chunk_of(rows, PREDICTIONS), NOW, LIMITS, aggregation, HORIZON)
    scored, rejected = prepare_predictions(rows, NOW, LIMITS, aggregation, HORIZON)
    assert [(r.row, r.id, r.field, r.error) for r in checked.rejected] == [
        (r.index + 1, r.id, r.field, r.error) for r in rejected
    ]
    assert checked.rows.tolist() == [s.position + 1 for s in scored]
    got = list(zip(checked.model, checked.prediction_id, checked.segment, checked.ts.tolist(),
                   checked.input_kind, checked.raw.tolist(), checked.predicted, checked.vector,
                   strict=True))  # fmt: skip
    assert got == [
        (s.model, s.prediction_id, s.segment, s.ts, s.input_kind, s.raw_confidence, s.predicted, s.vector)
        for s in scored
    ]


INTEGER_PREDICTED = PREDICTIONS.set(6, pa.field("predicted", pa.int64()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([10**11, 10**12])),
        min_size=1,
        max_size=25,
    )
)
def test_integer_labels_are_checked_as_their_text(labels: list[int | None]) -> None:
    rows: list[dict[str, Any]] = [
        {"model": "m", "id": f"p{i}", "ts": NOW - 60, "confidence": 0.5, "predicted": label}
        for i, label in enumerate(labels)
    ]
    checked = check_predictions(chunk_of(rows, INTEGER_PREDICTED), NOW, LIMITS, aggregation, HORIZON)
    api_rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    scored, rejected = prepare_predictions(api_rows, NOW, LIMITS, aggregation, HORIZON)
    assert [(r.row, r.field, r.error) for r in checked.rejected] == [
        (r.index + 1, r.field, r.error) for r in rejected
    ]
    assert checked.predicted == [s.predicted for s in scored]


LABELS = pa.schema(
    [("model", pa.string()), ("id", pa.string()), ("correct", pa.bool_()), ("label", pa.string()),
     ("labelled_at", pa.float64())]
)  # fmt: skip


@st.composite
def label(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"model": draw(names), "id": draw(names), "labelled_at": NOW - 5}
    form = draw(st.sampled_from(["correct", "label", "both", "none"]))
    if form in ("correct", "both"):
        row["correct"] = draw(st.booleans())
    if form in ("label", "both"):
        row["label"] = draw(names)
    return row


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(label(), min_size=1, max_size=25))
def test_label_checks_agree_with_the_api_row_for_row(rows: list[dict[str, Any]]) -> None:
    checked = check_labels(chunk_of(rows, LABELS), NOW, LIMITS)
    api_rows = [{k: v for k, v in r.items() if k != "labelled_at"} for r in rows]
    prepared, rejected = prepare_feedback(api_rows, LIMITS)
    assert [(r.row, r.id, r.field, r.error) for r in checked.rejected] == [
        (r.index + 1, r.id, r.field, r.error) for r in rejected
    ]
    assert checked.rows.tolist() == [i + 1 for i, _ in prepared]
    assert list(zip(checked.model, checked.prediction_id, checked.correct, checked.label, strict=True)) == [
        (item.model, item.prediction_id, item.correct, item.label) for _, item in prepared
    ]
