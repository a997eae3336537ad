"""One series' sketch moments over time, for pages: hourly coarse-bin sums (``sketch_hours``).

A page shows a week of one series as a few dozen points. Read from the 5-minute fine buckets, the
model-wide series of a model with 10 segments is ~1M rows (1.2 s on SQLite); from the hourly
rollup at ``ece_bins`` bins it is ~50k. The rollup is written by the fold (``fold_hours``, in the
fold's transaction, from the deltas it just added to the buckets), so it always equals the buckets
coarsened; ``rebuild_hours`` recomputes it from the buckets with one set-based statement (after
``rebuild-aggregates``, after the migration that created it, or when ``ece_bins`` changes).

A bucket belongs to the hour its start lies in. Hours are integer arithmetic on the bucket start
(an exact integer in both SQLite and PostgreSQL), so every query is portable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import BigInteger, Connection, cast, delete, func, insert, literal, select

from monitor.calibration.sketch import TAIL_BINS, CalibrationSketch, Moment
from monitor.store.schema import MOMENT_COLUMNS, sketch_bins, sketch_hours

__all__ = [
    "HOUR",
    "ensure_hours",
    "fold_hours",
    "rebuild_hours",
    "sketch_history",
]

HOUR = 3600
_UPSERT = (
    "INSERT INTO sketch_hours (model, segment, score, hour_start, bins, bin, "
    + ", ".join(MOMENT_COLUMNS)
    + ") "
    "VALUES ({marks}) ON CONFLICT (model, segment, score, hour_start, bins, bin) DO UPDATE SET "
    + ", ".join(f"{c} = sketch_hours.{c} + excluded.{c}" for c in MOMENT_COLUMNS)
)


def fold_hours(
    conn: Connection, deltas: Iterable[tuple[str, str, str, float, np.ndarray]], bins: int
) -> None:
    """Add fine-bucket deltas (model, segment, score, bucket start, moments) to their hours."""
    summed: dict[tuple[str, str, str, float], np.ndarray] = {}
    for model, segment, score, bucket_start, moments in deltas:
        uniform = moments[:, : moments.shape[1] - TAIL_BINS]  # the tail repeats the top bins
        coarse = uniform.reshape(moments.shape[0], bins, -1).sum(axis=2)
        key = (model, segment, score, float(bucket_start // HOUR * HOUR))
        if key in summed:
            summed[key] += coarse
        else:
            summed[key] = coarse
    params: list[tuple[object, ...]] = []
    for (model, segment, score, hour), moments in summed.items():
        occupied = np.flatnonzero((moments[Moment.N] != 0) | (moments[Moment.N_L] != 0))
        values = moments[:, occupied].T.tolist()
        params.extend((model, segment, score, hour, bins, int(b), *v)
                      for b, v in zip(occupied.tolist(), values, strict=True))  # fmt: skip
    if params:
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        conn.exec_driver_sql(_UPSERT.format(marks=", ".join([mark] * (6 + len(MOMENT_COLUMNS)))), params)


def rebuild_hours(conn: Connection, bins: int, fine_bins: int, since: float | None = None) -> None:
    """Recompute the hours (all, or those from the hour holding ``since``) from the fine buckets."""
    if fine_bins % bins:
        raise ValueError(f"bins ({bins}) must divide fine_bins ({fine_bins})")
    start = None if since is None else float(since // HOUR * HOUR)
    removal = delete(sketch_hours)
    if start is not None:
        removal = removal.where(sketch_hours.c.hour_start >= start)
    conn.execute(removal)
    hour = (cast(sketch_bins.c.bucket_start, BigInteger) // HOUR) * HOUR
    coarse = sketch_bins.c.bin // (fine_bins // bins)
    keys = (sketch_bins.c.model, sketch_bins.c.segment, sketch_bins.c.score, hour, coarse)
    query = select(
        *keys[:4], literal(bins), keys[4], *(func.sum(sketch_bins.c[m]) for m in MOMENT_COLUMNS)
    ).where(sketch_bins.c.bin < fine_bins)  # the tail repeats the top bins
    if start is not None:
        query = query.where(sketch_bins.c.bucket_start >= start)
    columns = ["model", "segment", "score", "hour_start", "bins", "bin", *MOMENT_COLUMNS]
    conn.execute(insert(sketch_hours).from_select(columns, query.group_by(*keys)))


def ensure_hours(conn: Connection, bins: int, fine_bins: int) -> bool:
    """Rebuild the hours when they were not written at ``bins`` (a new table, or ``ece_bins``
    changed) while buckets exist; whether it did."""
    current = conn.execute(select(sketch_hours.c.bins).limit(1)).scalar()
    if current == bins or conn.execute(select(sketch_bins.c.bin).limit(1)).scalar() is None:
        return False
    rebuild_hours(conn, bins, fine_bins)
    return True


def sketch_history(
    conn: Connection,
    model: str,
    since: int,
    step: int,
    fine_bins: int,
    n_bins: int,
    *,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[tuple[str, float], CalibrationSketch]:
    """Per (score, period start), the sketch at ``n_bins`` bins of the buckets with start >= ``since``.

    Periods of whole hours (``since`` and ``step`` multiples of ``HOUR``) are read from the hourly
    rollup; shorter ones from the fine buckets (a young model: a few hours of them). Segments: all of
    the model's (the model-wide series), ``only`` these, or all but ``exclude`` (the capped
    ``other`` series).
    """
    if fine_bins % n_bins:
        raise ValueError(f"n_bins ({n_bins}) must divide fine_bins ({fine_bins})")
    hourly = since % HOUR == 0 and step % HOUR == 0
    table = sketch_hours if hourly else sketch_bins
    start = table.c.hour_start if hourly else table.c.bucket_start
    period = (cast(start, BigInteger) - since) // step
    coarse = table.c.bin if hourly else table.c.bin // (fine_bins // n_bins)
    query = (
        select(table.c.score, period, coarse, *(func.sum(table.c[m]) for m in MOMENT_COLUMNS))
        .where(table.c.model == model, start >= since)
        .group_by(table.c.score, period, coarse)
    )
    # hourly rows hold one binning; fine buckets also hold the tail, which repeats the top bins
    query = query.where(table.c.bins == n_bins) if hourly else query.where(table.c.bin < fine_bins)
    if only is not None:
        query = query.where(table.c.segment.in_(list(only)))
    if exclude:
        query = query.where(table.c.segment.not_in(list(exclude)))
    found: dict[tuple[str, float], CalibrationSketch] = {}
    for score, index, b, *values in conn.execute(query):
        key = (score, float(since + int(index) * step))
        sketch = found.setdefault(key, CalibrationSketch(n_bins))
        sketch.moments[:, int(b)] = values
    return found
