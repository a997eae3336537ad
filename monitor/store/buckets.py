"""Sketch buckets' write side: the delta one fold adds to one bucket, and the statement that adds it.

Shared by the fold of raw rows (``store.aggregates``) and of sketch batches computed outside calmon
(``store.sketch_batches``): both add moments to ``sketch_bins`` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection

from monitor.calibration.sketch import Moment
from monitor.store.schema import MOMENT_COLUMNS

__all__ = ["BucketDelta", "bucket_of", "upsert_buckets"]


@dataclass(frozen=True)
class BucketDelta:
    """Moments added to one bucket by one aggregation run (also fed to in-memory windows)."""

    model: str
    segment: str
    score: str
    bucket_start: float
    moments: NDArray[np.float64]  # (len(MOMENTS), fine_bins + TAIL_BINS): uniform bins, then the tail


def bucket_of(ts: NDArray[np.float64], bucket_seconds: int) -> NDArray[np.float64]:
    return np.floor(ts / bucket_seconds) * bucket_seconds


_UPSERT = (
    "INSERT INTO sketch_bins (model, segment, score, bucket_start, bin, " + ", ".join(MOMENT_COLUMNS) + ") "
    "VALUES ({marks}) ON CONFLICT (model, segment, score, bucket_start, bin) DO UPDATE SET "
    + ", ".join(f"{c} = sketch_bins.{c} + excluded.{c}" for c in MOMENT_COLUMNS)
)


_STAGED = "calmon_fold_buckets"
_COLUMNS = "model, segment, score, bucket_start, bin, " + ", ".join(MOMENT_COLUMNS)
_TYPES = ["text", "text", "text", "float8", "int4"] + ["float8"] * len(MOMENT_COLUMNS)
_FROM_STAGED = (
    f"INSERT INTO sketch_bins ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGED} "  # noqa: S608 (constants)
    "ORDER BY model, segment, score, bucket_start, bin "  # one lock order for concurrent folds
    "ON CONFLICT (model, segment, score, bucket_start, bin) DO UPDATE SET "
    + ", ".join(f"{c} = sketch_bins.{c} + excluded.{c}" for c in MOMENT_COLUMNS)
)


def _copy_upsert(
    conn: Connection,
    keys: list[tuple[str, str, float]],
    score: str,
    group: list[int],
    column: list[int],
    values: list[list[float]],
) -> None:
    """PostgreSQL: binary COPY into a session table, then one ``INSERT ... SELECT ... ON CONFLICT``
    (an executemany sends a statement per row; arrays through ``unnest`` cost more to dump)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGED} (LIKE sketch_bins) ON COMMIT DELETE ROWS")
        cursor.execute(f"DELETE FROM {_STAGED}")  # noqa: S608 (a constant table name)
        with cursor.copy(f"COPY {_STAGED} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_TYPES)
            for g, b, v in zip(group, column, values, strict=True):
                copy.write_row((keys[g][0], keys[g][1], score, keys[g][2], b, *v))
        cursor.execute(_FROM_STAGED)
    finally:
        cursor.close()


def upsert_buckets(
    conn: Connection, keys: list[tuple[str, str, float]], score: str, moments: NDArray[np.float64]
) -> None:
    """Add one score's grouped moments (groups x moments x bins) to the stored buckets, non-empty
    bins only: one statement over arrays on PostgreSQL (``unnest``: an executemany there sends a
    statement per row), one driver executemany on SQLite (which runs it in-process)."""
    group, column = np.nonzero((moments[:, Moment.N] != 0) | (moments[:, Moment.N_L] != 0))
    if not group.size:
        return
    values = moments[group, :, column].tolist()
    if conn.dialect.name == "postgresql":
        _copy_upsert(conn, keys, score, group.tolist(), column.tolist(), values)
        return
    params = [
        (keys[g][0], keys[g][1], score, keys[g][2], b, *v)
        for g, b, v in zip(group.tolist(), column.tolist(), values, strict=True)
    ]
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    conn.exec_driver_sql(_UPSERT.format(marks=", ".join([mark] * (5 + len(MOMENT_COLUMNS)))), params)
