"""What the fold reads, and how it marks what it folded: set-based statements around a batch.

The database selects a batch (a pk range, or the exact pks locked on PostgreSQL), joins each row's
(model, segment) to a small integer series id and hands back numbers only — series id, prediction
time, raw and calibrated confidence, correctness as -1/0/1 and fold state — read straight into one
NumPy array; the fold groups them with the sketch's own vectorised binning (``grouped_moments``);
one ``DELETE`` takes every row of the batch off the work list (``fold_queue``). No SQLAlchemy
row or per-row statement is involved. The one exception: PostgreSQL's exact pks (a tick, at most a
fold's limit) come back with their (model, segment), mapped to series ids in Python
(``_exact_columns`` says why).

Why the grouping is not a SQL ``GROUP BY``: written in SQL (``floor`` with exact edge literals for
the uniform bins, a log formula for the tail, ``ln`` for the log-likelihood, ten sums) it matched
the sketch but a 1M-row rebuild took 20.5 s on SQLite (10.6 s this way) and 28.5 s on PostgreSQL
(27.1 s this way), and it was a second copy of the binning rules (``docs/architecture.md``).
"""

# Statements are assembled from constants (column and table names); every value from a client (a
# model or segment name) and every bound is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, text

__all__ = ["Batch", "Columns", "fetch_columns", "mark_folded", "series_pairs", "use_series"]

_SERIES_TABLE = "calmon_fold_series"


@dataclass(frozen=True)
class Batch:
    """Which prediction rows one fold step reads, and whether it counts them as new.

    ``pending``: the work list's rows (``fold_queue``) with ``lo <= pk <= hi`` (SQLite, whose fold
    holds the write lock: ``BEGIN IMMEDIATE``), or exactly ``pks`` (PostgreSQL, locked ``FOR UPDATE
    SKIP LOCKED``); a row not ``fresh`` adds only its label. ``rebuild``: every prediction with
    ``lo <= pk <= hi`` predicted at or after ``since``, counted whole whatever its state (its
    buckets were just deleted).
    """

    lo: int | None  # None (a rebuild): no pk bound, which lets SQLite read a covering index
    hi: int | None
    pks: list[int] | None = None
    rebuild: bool = False
    since: float | None = None
    fresh: frozenset[int] = frozenset()  # of ``pks``: those whose prediction is not counted yet

    @classmethod
    def pending(cls, pks: Sequence[int], exact: bool, fresh: Sequence[int] = ()) -> Batch:
        """``fresh``: with ``exact``, the pks whose work-list row says so (read with the lock)."""
        if not exact:
            return cls(int(pks[0]), int(pks[-1]))
        return cls(int(pks[0]), int(pks[-1]), [int(k) for k in pks], fresh=frozenset(int(k) for k in fresh))

    def source(self) -> str:
        """The rows read. A pending range's from its work-list rows outwards (``CROSS JOIN`` keeps
        SQLite to that order: left to choose, it scanned every prediction of the range, which spans
        the earlier rows a label queued). Exact pks and a rebuild's ranges: the predictions alone
        (joined to the work list, PostgreSQL at times read every prediction through the series
        table and sorted them: 5 s instead of 0.4 s per tick at 2M rows)."""
        if self.rebuild or self.pks is not None:
            return "predictions p"
        return "fold_queue q CROSS JOIN predictions p"

    def where(self) -> str:
        if self.rebuild:
            clauses = ["p.pk BETWEEN :lo AND :hi"] if self.lo is not None else []
            clauses += ["p.ts >= :since"] if self.since is not None else []
            return " AND ".join(clauses) or "1 = 1"
        if self.pks is not None:
            return "p.pk = ANY(:pks)"
        return "p.pk = q.pk AND q.pk BETWEEN :lo AND :hi"

    def params(self) -> dict[str, Any]:
        if self.pks is not None:
            return {"pks": self.pks}
        found: dict[str, Any] = {"lo": self.lo, "hi": self.hi} if self.lo is not None else {}
        if self.since is not None:
            found["since"] = self.since
        return found


@dataclass(frozen=True)
class Columns:
    """A batch's rows as arrays (row order: pk)."""

    series: NDArray[np.int64]  # index into the ids given to ``use_series``
    ts: NDArray[np.float64]
    raw: NDArray[np.float64]
    calibrated: NDArray[np.float64]
    correct: NDArray[np.float64]  # 1.0 right, 0.0 wrong, -1.0 no label
    fresh: NDArray[np.bool_]  # the prediction is not in the buckets yet

    @property
    def size(self) -> int:
        return int(self.ts.size)


def series_pairs(conn: Connection, batch: Batch) -> list[tuple[str, str]]:
    """The batch's (model, segment) pairs in the order the fold meets them (first pk): the order
    ``store.segments`` registers new segments in."""
    query = text(
        f"SELECT p.model, p.segment FROM {batch.source()} WHERE {batch.where()} "
        "GROUP BY p.model, p.segment ORDER BY MIN(p.pk)"
    )
    return [(r[0], r[1]) for r in conn.execute(query, batch.params())]


def use_series(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
    """Number the (model, segment) pairs 0.. for ``fetch_columns`` (a temporary table, per session)."""
    session_only = " ON COMMIT DELETE ROWS" if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE IF NOT EXISTS {_SERIES_TABLE} "
        f"(model TEXT NOT NULL, segment TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (model, segment))"
        f"{session_only}"
    )
    conn.exec_driver_sql(f"DELETE FROM {_SERIES_TABLE}")
    if pairs:
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        conn.exec_driver_sql(
            f"INSERT INTO {_SERIES_TABLE} (model, segment, id) VALUES ({mark}, {mark}, {mark})",
            [(model, segment, i) for i, (model, segment) in enumerate(pairs)],
        )


def fetch_columns(conn: Connection, batch: Batch) -> Columns:
    """The batch's numbers, read into arrays (``use_series`` first)."""
    if batch.pks is not None:
        return _exact_columns(conn, batch)
    fresh = "1" if batch.rebuild else "CASE WHEN q.fresh THEN 1 ELSE 0 END"
    correct = "CASE WHEN p.correct IS NULL THEN -1 WHEN p.correct THEN 1 ELSE 0 END"
    columns = ["s.id", "p.ts", "p.raw_confidence", "p.calibrated_confidence", correct, fresh]
    if conn.dialect.name == "postgresql":  # the binary COPY below reads fixed widths
        columns = [
            f"({c})::{t}" for c, t in zip(columns, ["int4", *["float8"] * 3, "int4", "int4"], strict=True)
        ]
    query = (
        f"SELECT {', '.join(columns)} "
        f"FROM {batch.source()} JOIN {_SERIES_TABLE} s ON s.model = p.model AND s.segment = p.segment "
        f"WHERE {batch.where()} ORDER BY p.pk"
    )
    if conn.dialect.name == "postgresql":
        copied = _copied_rows(conn, query, batch.params())
        return Columns(
            copied["series"].astype(np.int64),
            copied["ts"].astype(np.float64),
            copied["raw"].astype(np.float64),
            copied["calibrated"].astype(np.float64),
            copied["correct"].astype(np.float64),
            copied["fresh"] == 1,
        )
    rows = _plain_rows(conn, query, batch.params())
    values = np.array(rows, dtype=np.float64).reshape(len(rows), 6)
    return Columns(
        values[:, 0].astype(np.int64),
        values[:, 1].copy(),
        values[:, 2].copy(),
        values[:, 3].copy(),
        values[:, 4].copy(),
        values[:, 5] == 1.0,
    )


def _exact_columns(conn: Connection, batch: Batch) -> Columns:
    """A batch of exact pks (PostgreSQL's tick, at most a fold's limit): the predictions by pk alone,
    the series ids mapped here. Joined in SQL to the series table, PostgreSQL at times drove the
    join from that (unanalysed) table through every prediction of each series, testing each against
    the array: a statement timeout at 2M rows instead of 0.4 s."""
    numbered = conn.exec_driver_sql(f"SELECT model, segment, id FROM {_SERIES_TABLE}")
    series = {(m, s): i for m, s, i in numbered}
    correct = "CASE WHEN p.correct IS NULL THEN -1 WHEN p.correct THEN 1 ELSE 0 END"
    query = (
        f"SELECT p.model, p.segment, p.pk, p.ts, p.raw_confidence, p.calibrated_confidence, {correct} "
        f"FROM {batch.source()} WHERE {batch.where()} ORDER BY p.pk"
    )
    rows = _plain_rows(conn, query, batch.params())
    ids = np.fromiter((series[(r[0], r[1])] for r in rows), np.int64, len(rows))
    values = np.array([r[2:] for r in rows], dtype=np.float64).reshape(len(rows), 5)
    fresh = np.fromiter(batch.fresh, np.int64, len(batch.fresh))
    return Columns(
        ids,
        values[:, 1].copy(),
        values[:, 2].copy(),
        values[:, 3].copy(),
        values[:, 4].copy(),
        np.isin(values[:, 0].astype(np.int64), fresh),
    )


# PostgreSQL's binary COPY of ``fetch_columns``' six non-null columns: per row a field count, then
# each field's length and big-endian value: a fixed 62 bytes, read by NumPy without a Python object
# per value. A rebuild's ranges read this way: 10M rows in 22 s instead of 33 s as driver tuples
# (the rest is the server's scan, join and sort); the tick's exact pks keep the driver's rows.
_COPY_ROW = np.dtype(
    [("fields", ">i2"), ("l0", ">i4"), ("series", ">i4"), ("l1", ">i4"), ("ts", ">f8"), ("l2", ">i4"),
     ("raw", ">f8"), ("l3", ">i4"), ("calibrated", ">f8"), ("l4", ">i4"), ("correct", ">i4"),
     ("l5", ">i4"), ("fresh", ">i4")]
)  # fmt: skip
_COPY_LENGTHS = {"l0": 4, "l1": 8, "l2": 8, "l3": 8, "l4": 4, "l5": 4}
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _copied_rows(conn: Connection, sql: str, params: dict[str, Any]) -> NDArray[Any]:
    """A pk-range batch through ``COPY (query) TO STDOUT (FORMAT BINARY)``. COPY takes no bound
    parameters: the bounds (numbers calmon computed, never a client's value) are written in."""
    literal = {key: repr(int(v)) if key in ("lo", "hi") else repr(float(v)) for key, v in params.items()}
    statement = re.sub(r"(?<!:):(\w+)", lambda m: literal[m.group(1)], sql)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY ({statement}) TO STDOUT (FORMAT BINARY)") as copy:
            data = b"".join(bytes(block) for block in copy)
    finally:
        cursor.close()
    if not data.startswith(_COPY_SIGNATURE):
        raise RuntimeError("COPY did not answer in PostgreSQL's binary format")
    start = len(_COPY_SIGNATURE) + 8 + int.from_bytes(data[15:19], "big")  # flags, extension length
    body = data[start:-2]  # the trailer: a field count of -1
    shape = "COPY answered rows of another shape than fetch_columns asked for"
    if len(body) % _COPY_ROW.itemsize:
        raise RuntimeError(shape)
    rows = np.frombuffer(body, dtype=_COPY_ROW)
    if (rows["fields"] != 6).any() or any((rows[name] != size).any() for name, size in _COPY_LENGTHS.items()):
        raise RuntimeError(shape)
    return rows


def _plain_rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows as the driver's plain tuples, in the caller's transaction: NumPy reads a list of tuples
    in ~0.3 s per million, and SQLAlchemy ``Row`` objects (probed key by key) 30x slower."""
    if conn.dialect.name == "postgresql":
        sql = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)  # psycopg's named style; sqlite3 takes :name
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def mark_folded(conn: Connection, batch: Batch) -> int:
    """Take the batch's rows off the work list in one statement; how many. A rebuild's range takes
    off every row it counted: fresh ones and labels alike were counted whole."""
    if not batch.rebuild:
        where = "pk = ANY(:pks)" if batch.pks is not None else "pk BETWEEN :lo AND :hi"
    elif batch.since is None:
        where = "pk BETWEEN :lo AND :hi"
    else:  # only rows predicted since then were counted
        where = "pk IN (SELECT pk FROM predictions WHERE pk BETWEEN :lo AND :hi AND ts >= :since)"
    return int(conn.execute(text(f"DELETE FROM fold_queue WHERE {where}"), batch.params()).rowcount)
