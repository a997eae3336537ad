"""The INSERT statements of the predictions table, shared by the API's path and ``calmon import``.

SQLite binds only the values that vary: a group of rows sharing input kind, calibrator version and
the presence of ``predicted`` and ``vector`` gets one statement with those as literals, and the
arrival time is one literal. Binding was the larger part of a driver executemany (measured: 6 bound
values instead of 11 took 2M rows from 169k to 229k rows/s with the table's three indexes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Connection

__all__ = ["PG_INSERT", "Columns", "insert_columns", "largest_pk", "queue_rows_after", "sqlite_insert"]

_KINDS = frozenset({"confidence", "probs", "logits", "token_logprobs"})

# PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) statement per batch. Measured on 1000-row
# batches: SQLAlchemy insertmanyvalues 72.8 ms, COPY into a temp table 15.9 ms, unnest 17.7 ms.
# unnest is chosen: near COPY speed, stateless (no temp table; safe behind transaction poolers),
# and RETURNING tells exactly which keys this transaction inserted when replicas race.
# The rows inserted enter the fold's work list (``fold_queue``) in the same statement.
PG_INSERT = (
    "WITH landed AS (INSERT INTO predictions (model, prediction_id, segment, ts, input_kind, "
    "raw_confidence, predicted, vector, calibrated_confidence, calibrator_version, received_at) "
    "SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[], %s::text[], "
    "%s::bytea[], %s::float8[], %s::text[], %s::float8[]) "
    "ON CONFLICT (model, prediction_id) DO NOTHING RETURNING pk, model, prediction_id), "
    "queued AS (INSERT INTO fold_queue (pk, fresh) SELECT pk, true FROM landed) "
    "SELECT model, prediction_id FROM landed"
)


class Columns(NamedTuple):
    """A batch of validated, scored predictions, column by column (the PredictionRow fields)."""

    model: Sequence[str]
    prediction_id: Sequence[str]
    segment: Sequence[str]
    ts: Sequence[float]
    input_kind: Sequence[str]
    raw: Sequence[float]
    predicted: Sequence[str | None]
    vector: Sequence[bytes | None]
    calibrated: Sequence[float]
    version: Sequence[str]


def insert_columns(conn: Connection, columns: Columns, received_at: float) -> int:
    """Insert the rows whose ``(model, id)`` is new (the first of a repeated key wins); how many."""
    if not columns.model:
        return 0
    if conn.dialect.name == "postgresql":
        arrays = (*(list(c) for c in columns), [received_at] * len(columns.model))
        return len(conn.exec_driver_sql(PG_INSERT, arrays).fetchall())
    return sqlite_insert(conn, columns, received_at)


def sqlite_insert(conn: Connection, columns: Columns, received_at: float, last_pk: int | None = None) -> int:
    """SQLite's ``insert_columns``: one statement per group of rows alike in their literals.
    ``last_pk``: the largest pk before the insert, if the caller has read it already."""
    c = columns
    n = len(c.model)
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    if last_pk is None:
        last_pk = largest_pk(conn)
    before = dbapi.total_changes
    uniform = len(set(c.input_kind)) == 1 and len(set(c.version)) == 1
    absent_predicted, absent_vector = list(c.predicted).count(None), list(c.vector).count(None)
    if uniform and absent_predicted in (0, n) and absent_vector in (0, n):
        # The common case (set() and count() run in C): one statement, no reordering.
        no_predicted, no_vector = absent_predicted == n, absent_vector == n
        statement = _statement(c.input_kind[0], c.version[0], no_predicted, no_vector, received_at)
        conn.exec_driver_sql(statement, _rows(c, None, no_predicted, no_vector))
    else:
        # Groups run one after the other: a key repeated in two groups must keep its first row, so
        # only the first row of each key is offered at all.
        first: dict[tuple[str, str], int] = {}
        for i, key in enumerate(zip(c.model, c.prediction_id, strict=True)):
            first.setdefault(key, i)
        groups: dict[tuple[str, str, bool, bool], list[int]] = defaultdict(list)
        for i in sorted(first.values()):
            groups[(c.input_kind[i], c.version[i], c.predicted[i] is None, c.vector[i] is None)].append(i)
        for (kind, version, no_predicted, no_vector), where in groups.items():
            statement = _statement(kind, version, no_predicted, no_vector, received_at)
            conn.exec_driver_sql(statement, _rows(c, where, no_predicted, no_vector))
    inserted = int(dbapi.total_changes - before)
    queue_rows_after(conn, last_pk)
    return inserted


def largest_pk(conn: Connection) -> int:
    """The largest prediction pk stored (0 for none): new rows go above it on SQLite."""
    return int(conn.exec_driver_sql("SELECT coalesce(max(pk), 0) FROM predictions").scalar_one())


def queue_rows_after(conn: Connection, last_pk: int) -> None:
    """Put the predictions above ``last_pk`` on the fold's work list, as new. Only where writers are
    serialised (SQLite's ``BEGIN IMMEDIATE``, a lone loader): a new rowid is above every stored one,
    so the rows above the largest pk before an insert are exactly the ones it added. Concurrent
    PostgreSQL writers take pks out of commit order: ``PG_INSERT`` queues what it inserted."""
    conn.exec_driver_sql(
        "INSERT INTO fold_queue (pk, fresh) SELECT pk, true FROM predictions WHERE pk > %s"
        if conn.dialect.name == "postgresql"
        else "INSERT INTO fold_queue (pk, fresh) SELECT pk, 1 FROM predictions WHERE pk > ?",
        (last_pk,),
    )


def _rows(
    c: Columns, where: list[int] | None, no_predicted: bool, no_vector: bool
) -> list[tuple[object, ...]]:
    """The bound values of each row: the literals of its statement left out."""
    columns: list[Sequence[object]] = [c.model, c.prediction_id, c.segment, c.ts, c.raw, c.calibrated]
    if not no_predicted:
        columns.append(c.predicted)
    if not no_vector:
        columns.append(c.vector)
    if where is not None:
        columns = [[column[i] for i in where] for column in columns]
    return list(zip(*columns, strict=True))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _statement(kind: str, version: str, no_predicted: bool, no_vector: bool, received_at: float) -> str:
    if kind not in _KINDS:
        raise ValueError(f"unknown input kind {kind!r}")
    predicted = "NULL" if no_predicted else "?"
    vector = "NULL" if no_vector else "?"
    # Literals: the kind is one of four words, the version is the registry's (quoted all the same).
    return (
        "INSERT INTO predictions (model, prediction_id, segment, ts, raw_confidence, calibrated_confidence, "  # noqa: S608
        "predicted, vector, input_kind, calibrator_version, received_at) "
        f"VALUES (?, ?, ?, ?, ?, ?, {predicted}, {vector}, {_literal(kind)}, {_literal(version)}, "
        f"{float(received_at)!r}) ON CONFLICT (model, prediction_id) DO NOTHING"
    )
