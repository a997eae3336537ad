"""The labelled rows a recalibration fits and validates on, newest first.

Both the predictions calmon logged and the training sample a sketch batch brought
(``store.sketch_batches``: its raw rows stayed where the batch was computed) are candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, select

from monitor.store.schema import predictions, training_sample
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
    """Up to ``limit`` labelled predictions of the series (``*``: every segment), only those
    predicted at or after ``since`` when given, newest prediction time first.

    The stored predictions chosen are the last ``limit`` calmon *received* (the series index is in
    arrival order, ``schema.predictions``); for traffic logged as it happens that is the same rows
    as the newest by ``ts``, and the fit/validation split still follows ``ts``."""
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
        .order_by(predictions.c.pk.desc())
        .limit(limit)
    )
    if segment != MODEL_WIDE:
        query = query.where(predictions.c.segment == segment)
    if since is not None:
        query = query.where(predictions.c.ts >= since)
    rows: list[tuple[float, bool, float, np.ndarray | None, int | None]] = []
    for r in conn.execute(query):
        z = logits_of(r.input_kind, r.vector)
        label = _class_index(r.label, z.size) if z is not None else None
        rows.append((float(r.raw_confidence), bool(r.correct), float(r.ts), z, label))
    sample = training_sample.c
    extra = (
        select(sample.raw_confidence, sample.correct, sample.ts)
        .where(sample.model == model)
        .order_by(sample.ts.desc())
        .limit(limit)
    )
    if segment != MODEL_WIDE:
        extra = extra.where(sample.segment == segment)
    if since is not None:
        extra = extra.where(sample.ts >= since)
    rows.extend((float(p), bool(y), float(ts), None, None) for p, y, ts in conn.execute(extra))
    rows = sorted(rows, key=lambda row: -row[2])[:limit]  # both lists by prediction time, the newest
    return LabelledRows(
        p=np.array([r[0] for r in rows], dtype=np.float64),
        y=np.array([r[1] for r in rows], dtype=np.float64),
        ts=np.array([r[2] for r in rows], dtype=np.float64),
        logits=[r[3] for r in rows],
        labels=[r[4] for r in rows],
    )
