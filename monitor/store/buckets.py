"""Sketch buckets' write side: the delta one fold adds to one bucket, and the statement that adds it.

Shared by the fold of raw rows (``store.aggregates``) and of sketch batches computed outside calmon
(``store.sketch_batches``): both add moments to ``sketch_bins`` the same way.
"""

# Statements are assembled from constants (table and column names) and numbers calmon computed.
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection

from monitor.calibration.sketch import Moment
from monitor.store.schema import MOMENT_COLUMNS

__all__ = ["BucketDelta", "RebuiltBuckets", "bucket_of", "upsert_buckets"]


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
    f"INSERT INTO sketch_bins ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGED} "
    "ORDER BY model, segment, score, bucket_start, bin "  # one lock order for concurrent folds
    "ON CONFLICT (model, segment, score, bucket_start, bin) DO UPDATE SET "
    + ", ".join(f"{c} = sketch_bins.{c} + excluded.{c}" for c in MOMENT_COLUMNS)
)


BinRow = tuple[Any, ...]  # a sketch_bins row: model, segment, score, bucket_start, bin, moments


def _bin_rows(keys: list[tuple[str, str, float]], score: str, moments: NDArray[np.float64]) -> list[BinRow]:
    """One score's grouped moments (groups x moments x bins) as ``sketch_bins`` rows, non-empty
    bins only."""
    group, column = np.nonzero((moments[:, Moment.N] != 0) | (moments[:, Moment.N_L] != 0))
    values = moments[group, :, column].tolist()
    return [
        (keys[g][0], keys[g][1], score, keys[g][2], b, *v)
        for g, b, v in zip(group.tolist(), column.tolist(), values, strict=True)
    ]


def _copy_upsert(conn: Connection, rows: list[BinRow]) -> None:
    """PostgreSQL: binary COPY into a session table, then one ``INSERT ... SELECT ... ON CONFLICT``
    (an executemany sends a statement per row; arrays through ``unnest`` cost more to dump)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGED} (LIKE sketch_bins) ON COMMIT DELETE ROWS")
        cursor.execute(f"DELETE FROM {_STAGED}")
        _copy_in(cursor, _STAGED, rows)
        cursor.execute(_FROM_STAGED)
    finally:
        cursor.close()


def _copy_in(cursor: Any, table: str, rows: list[BinRow]) -> None:
    with cursor.copy(f"COPY {table} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_TYPES)
        for row in rows:
            copy.write_row(row)


_REBUILT = "calmon_rebuilt_buckets"  # every range's rows, summed per key at the end
_SUMMED = "calmon_rebuilt_sums"
_KEY = ("model", "segment", "score", "bucket_start", "bin")
_SAME_KEY = " AND ".join(f"b.{k} = r.{k}" for k in _KEY)
# Stored sums within 1e-12 of the recomputed ones are the same numbers added in another order (the
# tick's batches against the rebuild's ranges): kept, not rewritten.
_CHANGED = " OR ".join(
    f"abs(b.{c} - r.{c}) > 1e-12 * greatest(abs(b.{c}), abs(r.{c}))" for c in MOMENT_COLUMNS
)


class RebuiltBuckets:
    """A rebuild's bucket rows on PostgreSQL: staged by ``COPY`` range by range (no index, no
    WAL: a temporary table), summed once, then merged into ``sketch_bins`` by three set-based
    statements that touch only what differs: rows no longer produced are deleted, rows whose sums
    changed are updated, new rows inserted. Deleting every bucket and inserting them again left a
    dead entry per row in the unique index for each insert to step over: at 10M rows the write was
    24 s of a 58-69 s recomputation that changed nothing (``docs/architecture.md``, "Scale")."""

    def __init__(self, conn: Connection, start: float | None):
        self.conn = conn
        self.start = start
        self.cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self.cursor.execute(f"CREATE TEMP TABLE {_REBUILT} (LIKE sketch_bins) ON COMMIT DROP")

    def add(self, keys: list[tuple[str, str, float]], score: str, moments: NDArray[np.float64]) -> None:
        rows = _bin_rows(keys, score, moments)
        if rows:
            _copy_in(self.cursor, _REBUILT, rows)

    def merge(self) -> None:
        """Make ``sketch_bins`` (from ``start`` on) hold exactly the staged sums."""
        sums = ", ".join(f"SUM({c}) AS {c}" for c in MOMENT_COLUMNS)
        keys = ", ".join(_KEY)
        since = "" if self.start is None else f" AND b.bucket_start >= {float(self.start)!r}"
        assign = ", ".join(f"{c} = r.{c}" for c in MOMENT_COLUMNS)
        statements = [
            f"CREATE TEMP TABLE {_SUMMED} ON COMMIT DROP AS "
            f"SELECT {keys}, {sums} FROM {_REBUILT} GROUP BY {keys}",
            f"ANALYZE {_SUMMED}",
            "SET LOCAL enable_nestloop = off",  # hash joins: probes or sorts of a million keys cost more
            "SET LOCAL enable_mergejoin = off",
            f"DELETE FROM sketch_bins b "
            f"WHERE NOT EXISTS (SELECT 1 FROM {_SUMMED} r WHERE {_SAME_KEY}){since}",
            f"UPDATE sketch_bins b SET {assign} FROM {_SUMMED} r WHERE {_SAME_KEY} AND ({_CHANGED})",
            f"INSERT INTO sketch_bins ({_COLUMNS}) SELECT {_COLUMNS} FROM {_SUMMED} r "
            f"WHERE NOT EXISTS (SELECT 1 FROM sketch_bins b WHERE {_SAME_KEY}) ORDER BY {keys} "
            # a key a concurrent fold inserted after the rebuild's snapshot: a serialization
            # failure (the rebuild fails whole and says to run it again), not a unique violation
            f"ON CONFLICT ({keys}) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in MOMENT_COLUMNS)}",
            "SET LOCAL enable_nestloop = on",
            "SET LOCAL enable_mergejoin = on",
        ]
        try:
            for statement in statements:
                self.cursor.execute(statement)
        finally:
            self.cursor.close()


def upsert_buckets(
    conn: Connection, keys: list[tuple[str, str, float]], score: str, moments: NDArray[np.float64]
) -> None:
    """Add one score's grouped moments (groups x moments x bins) to the stored buckets, non-empty
    bins only: a binary COPY and one merging statement on PostgreSQL (an executemany there sends a
    statement per row), one driver executemany on SQLite (which runs it in-process)."""
    rows = _bin_rows(keys, score, moments)
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_upsert(conn, rows)
        return
    conn.exec_driver_sql(_UPSERT.format(marks=", ".join(["?"] * (5 + len(MOMENT_COLUMNS)))), rows)
