"""Read-side queries for the model endpoints: counts from the fold's totals, never a scan of the raw
predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from monitor.store.schema import calibrators, feedback_conflicts, pending_feedback, predictions, sketch_bins
from monitor.store.totals import SegmentCounts, read_totals, unfolded_totals

__all__ = [
    "ModelCounts",
    "SegmentCounts",
    "active_calibrators",
    "model_counts",
    "series_known",
]


@dataclass(slots=True)
class ModelCounts:
    model: str
    predictions: int = 0
    labelled: int = 0
    pending_feedback: int = 0
    conflicts: int = 0
    segments: list[SegmentCounts] = field(default_factory=list)


def _counts_by_model(conn: Connection, table: Any, model: str | None) -> dict[str, int]:
    query = select(table.c.model, func.count()).group_by(table.c.model)
    if model is not None:
        query = query.where(table.c.model == model)
    return {m: int(n) for m, n in conn.execute(query)}


def model_counts(conn: Connection, model: str | None = None) -> dict[str, ModelCounts]:
    """Per model (or one model): prediction, label, pending and conflict counts by segment: the
    fold's lifetime totals per series (``store.totals``) and the rows it has not reached yet."""
    result: dict[str, ModelCounts] = {}
    for m, segment in [*read_totals(conn, model), *unfolded_totals(conn, model)]:
        counts = result.setdefault(m, ModelCounts(model=m))
        counts.predictions += segment.predictions
        counts.labelled += segment.labelled
        counts.segments.append(segment)
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
