"""The labelled rows a recalibration fits and validates on, newest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, select

from monitor.store.schema import predictions
from monitor.store.vectors import logits_of
from monitor.vocabulary import MODEL_WIDE

__all__ = ["LabelledRows", "labelled_rows"]


@dataclass
class LabelledRows:
    """Recent labelled rows of one series, newest first."""

    p: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    logits: list[np.ndarray | None]  # per row: class logits when stored (probs as log-probs)
    labels: list[int | None]  # per row: the true class index when the label feedback names one

    @property
    def size(self) -> int:
        return int(self.p.size)


def _class_index(label: str | None, classes: int) -> int | None:
    if label is None or not label.isdigit():
        return None
    index = int(label)
    return index if index < classes else None


def labelled_rows(
    conn: Connection, model: str, segment: str, limit: int, since: float | None = None
) -> LabelledRows:
    """Up to ``limit`` newest labelled predictions of the series (``*``: every segment), only those
    predicted at or after ``since`` when given."""
    query = (
        select(
            predictions.c.raw_confidence,
            predictions.c.correct,
            predictions.c.ts,
            predictions.c.input_kind,
            predictions.c.vector,
            predictions.c.label,
        )
        .where(predictions.c.model == model, predictions.c.correct.is_not(None))
        .order_by(predictions.c.ts.desc())
        .limit(limit)
    )
    if segment != MODEL_WIDE:
        query = query.where(predictions.c.segment == segment)
    if since is not None:
        query = query.where(predictions.c.ts >= since)
    rows = conn.execute(query).all()
    logits = [logits_of(r.input_kind, r.vector) for r in rows]
    return LabelledRows(
        p=np.array([r.raw_confidence for r in rows], dtype=np.float64),
        y=np.array([bool(r.correct) for r in rows], dtype=np.float64),
        ts=np.array([r.ts for r in rows], dtype=np.float64),
        logits=logits,
        labels=[
            _class_index(r.label, z.size) if z is not None else None
            for r, z in zip(rows, logits, strict=True)
        ],
    )
