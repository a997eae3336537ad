"""Read-side queries for the model endpoints (label-state counts straight from the raw tables)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, case, func, select

from monitor.store.schema import calibrators, feedback_conflicts, pending_feedback, predictions, sketch_bins

__all__ = [
    "ModelCounts",
    "SegmentCounts",
    "active_calibrators",
    "model_counts",
    "series_known",
]


@dataclass(slots=True)
class SegmentCounts:
    segment: str
    predictions: int
    labelled: int
    correct: int
    raw_confidence_sum_labelled: float
    first_ts: float | None
    last_ts: float | None


@dataclass(slots=True)
class ModelCounts:
    model: str
    predictions: int = 0
    labelled: int = 0
    pending_feedback: int = 0
    conflicts: int = 0
    segments: list[SegmentCounts] = field(default_factory=list)


def _segment_rows(conn: Connection, model: str | None) -> list[Any]:
    labelled = func.count(predictions.c.correct)
    query = select(
        predictions.c.model,
        predictions.c.segment,
        func.count(),
        labelled,
        func.coalesce(func.sum(case((predictions.c.correct.is_(True), 1), else_=0)), 0),
        func.coalesce(func.sum(predictions.c.raw_confidence).filter(predictions.c.correct.is_not(None)), 0.0),
        func.min(predictions.c.ts),
        func.max(predictions.c.ts),
    ).group_by(predictions.c.model, predictions.c.segment)
    if model is not None:
        query = query.where(predictions.c.model == model)
    return list(conn.execute(query.order_by(predictions.c.model, predictions.c.segment)))


def _counts_by_model(conn: Connection, table: Any, model: str | None) -> dict[str, int]:
    query = select(table.c.model, func.count()).group_by(table.c.model)
    if model is not None:
        query = query.where(table.c.model == model)
    return {m: int(n) for m, n in conn.execute(query)}


def model_counts(conn: Connection, model: str | None = None) -> dict[str, ModelCounts]:
    """Per model (or one model): prediction, label, pending and conflict counts by segment."""
    result: dict[str, ModelCounts] = {}
    for m, segment, n, n_l, n_correct, conf_sum, first_ts, last_ts in _segment_rows(conn, model):
        counts = result.setdefault(m, ModelCounts(model=m))
        counts.predictions += int(n)
        counts.labelled += int(n_l)
        counts.segments.append(
            SegmentCounts(segment, int(n), int(n_l), int(n_correct), float(conf_sum), first_ts, last_ts)
        )
    for m, n in _counts_by_model(conn, pending_feedback, model).items():
        result.setdefault(m, ModelCounts(model=m)).pending_feedback = n
    for m, n in _counts_by_model(conn, feedback_conflicts, model).items():
        result.setdefault(m, ModelCounts(model=m)).conflicts = n
    return result


def active_calibrators(conn: Connection, model: str) -> list[dict[str, Any]]:
    query = (
        select(
            calibrators.c.id,
            calibrators.c.segment,
            calibrators.c.version,
            calibrators.c.method,
            calibrators.c.activated_at,
        )
        .where(calibrators.c.model == model, calibrators.c.status == "active")
        .order_by(calibrators.c.segment)
    )
    return [
        {"id": i, "segment": s, "version": str(v), "method": meth, "activated_at": at}
        for i, s, v, meth, at in conn.execute(query)
    ]


def series_known(conn: Connection, model: str, segment: str | None = None) -> bool:
    """Whether any prediction of the model (and segment) is stored, raw or already in the buckets."""
    for table in (predictions, sketch_bins):
        query = select(table.c.model).where(table.c.model == model)
        if segment is not None:
            query = query.where(table.c.segment == segment)
        if conn.execute(query.limit(1)).first() is not None:
            return True
    return False
