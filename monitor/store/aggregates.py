"""Sketch buckets: fold raw predictions and late labels into ``sketch_bins``, and read them back.

A prediction whose row or label is not counted yet has a row in the work list ``fold_queue``
(``fresh``: the prediction itself is not). ``aggregate_pending`` takes a bounded batch of them,
reads their numbers in one array (``store.folding``), adds their moments to the buckets of their
*prediction* time and deletes them from the work list with one statement, all in the caller's
transaction: a crash before commit changes nothing, after commit everything — never a double count
or a loss. On PostgreSQL the batch is locked with SKIP LOCKED, so concurrent runs never take the
same row, and a feedback transaction queueing a label for a row waits for the run that holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, delete, func, select

from monitor.calibration.sketch import CalibrationSketch, grouped_moments
from monitor.store.buckets import BucketDelta, RebuiltBuckets, bucket_of, upsert_buckets
from monitor.store.evidence import append_pending, label_sum_rows
from monitor.store.folding import Batch, fetch_columns, mark_folded, series_pairs, use_series
from monitor.store.history import fold_hours, rebuild_hours
from monitor.store.schema import MOMENT_COLUMNS, fold_queue, predictions, sketch_bins
from monitor.store.segments import CapOf, SegmentMap
from monitor.store.sketch_batches import reapply
from monitor.store.totals import add_totals, reset_totals
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
    "tidy_after_rebuild",
]
SeriesKey = tuple[str, str, str]  # (model, segment, score)


@dataclass(frozen=True)
class AggregationRun:
    rows: int  # prediction rows folded in this run
    deltas: list[BucketDelta]


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
    query = select(fold_queue.c.pk, fold_queue.c.fresh).order_by(fold_queue.c.pk).limit(limit)
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        query = query.with_for_update(skip_locked=True)
    queued = conn.execute(query).all()
    if not queued:
        return AggregationRun(0, [])
    pks = [pk for pk, _ in queued]
    batch = Batch.pending(pks, exact=postgres, fresh=[pk for pk, fresh in queued if fresh])
    _, deltas = _fold(conn, batch, bucket_seconds, fine_bins, cap_of, evidence_bins, tolerance_of)
    if hour_bins is not None:
        fold_hours(
            conn, ((d.model, d.segment, d.score, d.bucket_start, d.moments) for d in deltas), hour_bins
        )
    mark_folded(conn, batch)
    return AggregationRun(len(pks), deltas)


def _fold(
    conn: Connection,
    batch: Batch,
    bucket_seconds: int,
    fine_bins: int,
    cap_of: CapOf | None,
    evidence_bins: int | None = None,
    tolerance_of: Callable[[str], float] = lambda model: 0.02,
    pairs: list[tuple[str, str]] | None = None,
    write: Callable[[list[tuple[str, str, float]], str, NDArray[np.float64]], None] | None = None,
) -> tuple[int, list[BucketDelta]]:
    """Add a batch's moments to the buckets (and its new labels' bets to the detectors' input);
    the rows read, and the deltas. ``write``: where the bucket rows go instead (a rebuild's)."""
    if pairs is None:
        pairs = series_pairs(conn, batch)
    segment_map = SegmentMap.load(conn, {m for m, _ in pairs}, cap_of) if cap_of is not None else None
    names = [(m, segment_map.series(m, s) if segment_map is not None else s) for m, s in pairs]
    use_series(conn, pairs)
    rows = fetch_columns(conn, batch)
    if not rows.size:
        return 0, []
    distinct: dict[tuple[str, str], int] = {}
    own = np.array([distinct.setdefault(name, len(distinct)) for name in names], dtype=np.int64)[rows.series]
    keys, group = _groups(own, bucket_of(rows.ts, bucket_seconds), list(distinct))
    add_totals(conn, list(distinct), own, rows.ts, rows.raw, rows.correct, rows.fresh)
    labelled = rows.correct >= 0
    correct = np.where(labelled, rows.correct, 0.0)
    deltas: list[BucketDelta] = []
    scores = {Score.RAW: rows.raw, Score.CALIBRATED: rows.calibrated}
    for score, p in scores.items():
        moments = grouped_moments(group, len(keys), fine_bins, p, correct, rows.fresh, labelled)
        if write is None:
            upsert_buckets(conn, keys, str(score), moments)
        else:
            write(keys, str(score), moments)
        deltas.extend(BucketDelta(m, s, score, b, moments[g]) for g, (m, s, b) in enumerate(keys))
    if evidence_bins is not None and labelled.any():
        new = {str(score): p[labelled] for score, p in scores.items()}
        append_pending(
            conn,
            label_sum_rows(keys, group[labelled], evidence_bins, new, correct[labelled], tolerance_of),
        )
    if segment_map is not None:
        segment_map.save(conn)
    return rows.size, deltas


def _groups(
    series: NDArray[np.int64], buckets: NDArray[np.float64], names: list[tuple[str, str]]
) -> tuple[list[tuple[str, str, float]], NDArray[np.int64]]:
    """Group rows by (model, series segment, bucket): the keys, and each row's group (``series``
    indexes ``names``)."""
    times, at = np.unique(buckets, return_inverse=True)
    unique, inverse = np.unique(series * times.size + at.reshape(-1), return_inverse=True)
    keys = [(*names[u // times.size], float(times[u % times.size])) for u in unique.tolist()]
    return keys, inverse.reshape(-1).astype(np.int64)


def rebuild(
    conn: Connection,
    bucket_seconds: int,
    fine_bins: int,
    batch: int = 1_000_000,
    since: float | None = None,
    cap_of: CapOf | None = None,
    hour_bins: int | None = None,
) -> int:
    """Recompute buckets from raw rows (``calmon rebuild-aggregates``); rows folded. On PostgreSQL
    it must be the first statement of ``conn``'s transaction (it sets the isolation level).

    With ``since``, only the buckets starting after the bucket that holds ``since`` are recomputed:
    before the retention cutoff the raw rows are gone, and their buckets are the only record left.
    Rows before that point keep their state (still-unfolded ones are folded as usual); the stored
    sketch batches (``store.sketch_batches``) are added again there. Rows are read
    in pk ranges of ``batch`` and counted whole whatever their state; one statement per range then
    takes them off the work list. With ``hour_bins``, the hourly rollup is recomputed from all the buckets.
    """
    if conn.dialect.name == "postgresql":
        # One snapshot for the whole rebuild, so that the rows it marks are the rows it counted. Under
        # READ COMMITTED each statement also sees what committed since the last one: a row (its pk
        # taken before the range's bound, committed late) or a label committed between reading a
        # range and marking it was marked folded without being counted. Now such a row is invisible
        # to the marking and the next fold counts it; a row the rebuild must mark that changed
        # meanwhile fails the rebuild whole (SQLSTATE 40001): nothing changes, run it again. On
        # SQLite the rebuild holds the write lock, so nothing commits meanwhile.
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        # An explicit, offline recomputation whose statements grow with the table: marking a 1M-row
        # range took longer than the API's 30 s statement timeout at 10M rows and 1,000 series.
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        # Each range is read sorted by pk: 1M rows spilled to disk under the default 4 MB.
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    start = None
    if since is not None:
        start = float(bucket_of(np.array([since]), bucket_seconds)[0]) + bucket_seconds
    reset_totals(conn, fine_bins, start)
    staged = RebuiltBuckets(conn, start) if conn.dialect.name == "postgresql" else None
    if staged is None:  # SQLite: delete, then add each range's rows
        if start is None:
            conn.execute(delete(sketch_bins))
        else:
            conn.execute(delete(sketch_bins).where(sketch_bins.c.bucket_start >= start))
    lo, hi = conn.execute(select(func.min(predictions.c.pk), func.max(predictions.c.pk))).one()
    total = 0
    if lo is not None:
        # the order the segments are met in, once (no pk bound: SQLite reads it from an index)
        pairs = series_pairs(conn, Batch(None, None, rebuild=True, since=start))
        write = staged.add if staged is not None else None
        for first in range(int(lo), int(hi) + 1, batch):
            chunk = Batch(first, min(first + batch - 1, int(hi)), rebuild=True, since=start)
            total += _fold(conn, chunk, bucket_seconds, fine_bins, cap_of, pairs=pairs, write=write)[0]
            mark_folded(conn, chunk)
    if staged is not None:
        staged.merge()  # PostgreSQL: the buckets become the staged sums, touching only what differs
    while run := aggregate_pending(conn, bucket_seconds, fine_bins, batch, cap_of).rows:
        total += run
    reapply(conn, fine_bins, cap_of, start)  # the batches computed outside calmon (no raw rows here)
    if hour_bins is not None:
        rebuild_hours(conn, hour_bins, fine_bins)
    return total


def tidy_after_rebuild(engine: Engine) -> None:
    """After a rebuild has committed, on PostgreSQL: vacuum and analyze the work list. The rebuild
    deleted its rows, leaving as many dead ones, which the model endpoints' read of the work list
    would walk until autovacuum came by. Outside any transaction, as VACUUM must be."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) fold_queue")


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
