"""Sketch buckets: fold raw predictions and late labels into ``sketch_bins``, and read them back.

Each prediction row carries ``agg_state`` (0: not counted; 1: counted as a prediction; 2: its label
counted too). ``aggregate_pending`` takes a bounded batch of rows that need work, adds their moments
to the buckets of their *prediction* time and advances their state, all in the caller's
transaction: a crash before commit changes nothing, after commit everything — never a double count
or a loss. On PostgreSQL the batch is locked with SKIP LOCKED, so concurrent runs never take the
same row and a feedback transaction labelling a row waits for the run that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, delete, func, select, update

from monitor.calibration.sketch import CalibrationSketch, Moment, grouped_moments
from monitor.store.evidence import append_pending, label_sum_rows
from monitor.store.history import fold_hours, rebuild_hours
from monitor.store.schema import MOMENT_COLUMNS, needs_fold, predictions, sketch_bins
from monitor.store.segments import CapOf, SegmentMap
from monitor.vocabulary import Score

__all__ = [
    "AggregationRun",
    "BucketDelta",
    "SeriesKey",
    "aggregate_pending",
    "bucket_of",
    "first_buckets",
    "load_sketches",
    "rebuild",
]
SeriesKey = tuple[str, str, str]  # (model, segment, score)


@dataclass(frozen=True)
class AggregationRun:
    rows: int  # prediction rows folded in this run
    deltas: list[BucketDelta]


@dataclass(frozen=True)
class BucketDelta:
    """Moments added to one bucket by one aggregation run (also fed to in-memory windows)."""

    model: str
    segment: str
    score: str
    bucket_start: float
    moments: NDArray[np.float64]  # (len(MOMENTS), fine_bins)


def bucket_of(ts: NDArray[np.float64], bucket_seconds: int) -> NDArray[np.float64]:
    return np.floor(ts / bucket_seconds) * bucket_seconds


def aggregate_pending(
    conn: Connection,
    bucket_seconds: int,
    fine_bins: int,
    limit: int = 50_000,
    cap_of: CapOf | None = None,
    evidence_bins: int | None = None,
    tolerance_of: Callable[[str], float] = lambda model: 0.02,
    hour_bins: int | None = None,
) -> AggregationRun:
    """Fold up to ``limit`` rows needing work into the buckets; how many, and the deltas applied.

    With ``cap_of`` (segments allowed per model), segments beyond a model's cap are written into the
    ``other`` series (``store.segments``); without it every segment keeps its own. With
    ``evidence_bins``, the new labels' sums and bets (at ``tolerance_of(model)``) are also appended
    for the drift detectors (``store.evidence``) — never on a rebuild, whose labels were bet on when
    first folded. With ``hour_bins``, the hourly rollup too (``store.history``)."""
    query = (
        select(
            predictions.c.pk,
            predictions.c.model,
            predictions.c.segment,
            predictions.c.ts,
            predictions.c.raw_confidence,
            predictions.c.calibrated_confidence,
            predictions.c.correct,
            predictions.c.agg_state,
        )
        .where(needs_fold())
        .order_by(predictions.c.pk)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).all()
    if not rows:
        return AggregationRun(0, [])
    pk = np.fromiter((r.pk for r in rows), dtype=np.int64, count=len(rows))
    ts = np.fromiter((r.ts for r in rows), dtype=np.float64, count=len(rows))
    state = np.fromiter((r.agg_state for r in rows), dtype=np.int64, count=len(rows))
    labelled = np.fromiter((r.correct is not None for r in rows), dtype=bool, count=len(rows))
    correct = np.fromiter((bool(r.correct) for r in rows), dtype=np.float64, count=len(rows))
    new_prediction = state == 0
    new_label = labelled  # state 0 with a label, or state 1 with a label: the label is new either way

    groups: dict[tuple[str, str, float], int] = {}
    buckets = bucket_of(ts, bucket_seconds)
    segment_map = SegmentMap.load(conn, {r.model for r in rows}, cap_of) if cap_of is not None else None
    series = segment_map.series if segment_map is not None else _own_segment
    group = np.fromiter(
        (
            groups.setdefault((r.model, series(r.model, r.segment), float(b)), len(groups))
            for r, b in zip(rows, buckets, strict=True)
        ),
        dtype=np.int64,
        count=len(rows),
    )
    deltas: list[BucketDelta] = []
    confidences: dict[str, NDArray[np.float64]] = {}
    for score, column in ((Score.RAW, "raw_confidence"), (Score.CALIBRATED, "calibrated_confidence")):
        p = confidences[score] = np.fromiter(
            (getattr(r, column) for r in rows), dtype=np.float64, count=len(rows)
        )
        moments = grouped_moments(group, len(groups), fine_bins, p, correct, new_prediction, new_label)
        deltas.extend(BucketDelta(m, s, score, b, moments[g]) for (m, s, b), g in groups.items())
    _upsert(conn, deltas)
    if hour_bins is not None:
        fold_hours(
            conn, ((d.model, d.segment, d.score, d.bucket_start, d.moments) for d in deltas), hour_bins
        )
    if evidence_bins is not None:
        scores = {score: p[new_label] for score, p in confidences.items()}
        rows_out = label_sum_rows(
            list(groups), group[new_label], evidence_bins, scores, correct[new_label], tolerance_of
        )
        append_pending(conn, rows_out)
    if segment_map is not None:
        segment_map.save(conn)
    _advance(conn, pk, labelled)
    return AggregationRun(len(rows), deltas)


def _advance(conn: Connection, pk: NDArray[np.int64], labelled: NDArray[np.bool_]) -> None:
    """Mark the folded rows: 1 counted as a prediction, 2 its label counted too."""
    new_state = np.where(labelled, 2, 1)
    changed = [(int(s), int(k)) for s, k in zip(new_state, pk, strict=True)]
    conn.exec_driver_sql(
        "UPDATE predictions SET agg_state = %s WHERE pk = %s"
        if conn.dialect.name == "postgresql"
        else "UPDATE predictions SET agg_state = ? WHERE pk = ?",
        changed,
    )


_UPSERT = (
    "INSERT INTO sketch_bins (model, segment, score, bucket_start, bin, " + ", ".join(MOMENT_COLUMNS) + ") "
    "VALUES ({marks}) ON CONFLICT (model, segment, score, bucket_start, bin) DO UPDATE SET "
    + ", ".join(f"{c} = sketch_bins.{c} + excluded.{c}" for c in MOMENT_COLUMNS)
)


def _upsert(conn: Connection, deltas: Iterable[BucketDelta]) -> None:
    """Add the deltas' non-empty bins to the stored buckets (driver executemany: ~1M rows/min)."""
    params: list[tuple[object, ...]] = []
    for delta in deltas:
        occupied = np.flatnonzero((delta.moments[Moment.N] != 0) | (delta.moments[Moment.N_L] != 0))
        if not occupied.size:
            continue
        values = delta.moments[:, occupied].T.tolist()
        head = (delta.model, delta.segment, delta.score, delta.bucket_start)
        params.extend((*head, int(b), *v) for b, v in zip(occupied.tolist(), values, strict=True))
    if not params:
        return
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    conn.exec_driver_sql(_UPSERT.format(marks=", ".join([mark] * (5 + len(MOMENT_COLUMNS)))), params)


def _own_segment(model: str, segment: str) -> str:
    return segment


def rebuild(
    conn: Connection,
    bucket_seconds: int,
    fine_bins: int,
    batch: int = 200_000,
    since: float | None = None,
    cap_of: CapOf | None = None,
    hour_bins: int | None = None,
) -> int:
    """Recompute buckets from raw rows (``calmon rebuild-aggregates``); rows folded.

    With ``since``, only the buckets starting after the bucket that holds ``since`` are recomputed:
    before the retention cutoff the raw rows are gone, and their buckets are the only record left.
    Rows before that point keep their state (still-unfolded ones are folded as usual). With
    ``hour_bins``, the hourly rollup is then recomputed from all the buckets.
    """
    if since is None:
        conn.execute(delete(sketch_bins))
        conn.execute(update(predictions).values(agg_state=0))
    else:
        start = float(bucket_of(np.array([since]), bucket_seconds)[0]) + bucket_seconds
        conn.execute(delete(sketch_bins).where(sketch_bins.c.bucket_start >= start))
        conn.execute(update(predictions).where(predictions.c.ts >= start).values(agg_state=0))
    total = 0
    while run := aggregate_pending(conn, bucket_seconds, fine_bins, batch, cap_of).rows:
        total += run
    if hour_bins is not None:
        rebuild_hours(conn, hour_bins, fine_bins)
    return total


def load_sketches(
    conn: Connection,
    fine_bins: int,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
    score: str | None = None,
) -> dict[SeriesKey, CalibrationSketch]:
    """Sum the buckets with ``since <= bucket_start < until`` into one sketch per series."""
    query = select(
        sketch_bins.c.model,
        sketch_bins.c.segment,
        sketch_bins.c.score,
        sketch_bins.c.bin,
        *(func.sum(sketch_bins.c[name]) for name in MOMENT_COLUMNS),
    ).group_by(sketch_bins.c.model, sketch_bins.c.segment, sketch_bins.c.score, sketch_bins.c.bin)
    if since is not None:
        query = query.where(sketch_bins.c.bucket_start >= since)
    if until is not None:
        query = query.where(sketch_bins.c.bucket_start < until)
    if model is not None:
        query = query.where(sketch_bins.c.model == model)
    if score is not None:
        query = query.where(sketch_bins.c.score == score)
    sketches: dict[SeriesKey, CalibrationSketch] = {}
    for model, segment, score, b, *values in conn.execute(query):
        sketch = sketches.setdefault((model, segment, score), CalibrationSketch(fine_bins))
        sketch.moments[:, b] = values
    return sketches


def first_buckets(conn: Connection) -> dict[str, float]:
    """Each model's earliest bucket still stored."""
    query = select(sketch_bins.c.model, func.min(sketch_bins.c.bucket_start)).group_by(sketch_bins.c.model)
    return {model: float(start) for model, start in conn.execute(query)}
