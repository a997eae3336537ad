"""The two write paths: predictions (joining early feedback) and feedback (joining or parking it).

Rules (documented in README "Feedback rules"):
* A prediction is identified by ``(model, prediction_id)``; the first write wins, later ones are
  duplicates and change nothing.
* The first label for a prediction wins. A later *equal* label is a duplicate; a later *different*
  label is a conflict: recorded in ``feedback_conflicts`` and counted, never applied. Ground truth
  that changes under the monitor would silently rewrite history that alerts were based on.
* Feedback for an unknown prediction is parked in ``pending_feedback`` and applied when the
  prediction lands (inline), or by ``reconcile_pending`` which closes the race where both arrive
  at the same moment on different replicas.

Every function runs inside the caller's transaction: the caller commits once, so a batch is
all-or-nothing at the database level and a 2xx is only sent after commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.insertion import PG_INSERT, Columns, largest_pk, sqlite_insert
from monitor.store.records import (
    FeedbackItem,
    FeedbackOutcome,
    FeedbackStatus,
    PredictionOutcome,
    PredictionResult,
    PredictionRow,
)
from monitor.store.schema import feedback_conflicts, pending_feedback, predictions

__all__ = [
    "CHUNK",
    "apply_feedback",
    "derive_correct",
    "insert_predictions",
    "join_parked",
    "reconcile_pending",
]


CHUNK = 900  # stays under SQLite's bound-parameter limit with room for the other parameters


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_ignoring_conflicts(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=["model", "prediction_id"])


def _for_update(conn: Connection, stmt: Any, skip_locked: bool = False, of: Any = None) -> Any:
    # SQLite serialises writers with BEGIN IMMEDIATE; PostgreSQL needs row locks.
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked, of=of)
    return stmt


def derive_correct(correct: bool | None, label: str | None, predicted: str | None) -> bool | None:
    """Correctness from explicit ``correct`` or by comparing ``label`` with the predicted label."""
    if correct is not None:
        return correct
    if label is not None and predicted is not None:
        return label == predicted
    return None


def insert_predictions(conn: Connection, rows: Sequence[PredictionRow], now: float) -> PredictionOutcome:
    """Insert new predictions, report duplicates with their stored scores, join early feedback."""
    first: dict[tuple[str, str], PredictionRow] = {}
    for row in rows:
        first.setdefault((row.model, row.prediction_id), row)
    inserted = _insert_new(conn, list(first.values()), now)

    missing = [key for key in first if key not in inserted]
    stored = _lookup(conn, missing, ["calibrated_confidence", "calibrator_version"])

    if len(inserted) == len(rows):  # the common batch: every record new, none repeated
        results = [PredictionResult(r.prediction_id, r.calibrated_confidence, r.calibrator_version, False)
                   for r in rows]  # fmt: skip
    else:
        results = _results(rows, inserted, stored)

    joined = _join_pending(conn, inserted) if _any_pending(conn, {m for m, _ in inserted}) else 0
    return PredictionOutcome(
        results=results,
        accepted=len(inserted),
        duplicates=len(rows) - len(inserted),
        labelled_from_pending=joined,
    )


def _results(
    rows: Sequence[PredictionRow],
    inserted: set[tuple[str, str]],
    stored: dict[tuple[str, str], tuple[Any, ...]],
) -> list[PredictionResult]:
    """Per record: its own scores if this batch inserted it first, else the stored ones (a duplicate)."""
    results: list[PredictionResult] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.model, row.prediction_id)
        fresh = key in inserted and key not in seen
        seen.add(key)
        if fresh:
            results.append(
                PredictionResult(row.prediction_id, row.calibrated_confidence, row.calibrator_version, False)
            )
        else:
            calibrated, version = stored.get(key, (row.calibrated_confidence, row.calibrator_version))
            results.append(PredictionResult(row.prediction_id, calibrated, version, True))
    return results


def _insert_new(conn: Connection, rows: Sequence[PredictionRow], now: float) -> set[tuple[str, str]]:
    """Insert rows whose key is new; the keys actually inserted.

    SQLite: writers are serialised (BEGIN IMMEDIATE), so the insert is optimistic: a driver-level
    executemany binding only what varies (``store.insertion``), and only when the
    change count falls short are the pre-existing keys identified — as those whose rowid is not
    above the largest one before the insert. PostgreSQL: replicas race, so ask with RETURNING.
    """
    if not rows:
        return set()
    keys = {(r.model, r.prediction_id) for r in rows}
    if conn.dialect.name == "sqlite":
        last_pk = largest_pk(conn)
        if sqlite_insert(conn, Columns(*zip(*rows, strict=True)), now, last_pk) == len(rows):
            return keys
        found = _lookup(conn, list(keys), ["pk"])
        return {key for key, (pk,) in found.items() if pk > last_pk}
    arrays = tuple(list(column) for column in zip(*((*r, now) for r in rows), strict=True))
    return {(m, p) for m, p in conn.exec_driver_sql(PG_INSERT, arrays)}


def _lookup(
    conn: Connection, keys: Sequence[tuple[str, str]], columns: Sequence[str], lock: bool = False
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Rows of ``predictions`` by (model, prediction_id): the requested columns per key found.

    SQLite: chunked ``IN`` lists (its planner always probes the unique index). PostgreSQL: one
    point query per key, pipelined by psycopg 3 in a single round trip. A ``model = ? AND
    prediction_id IN (...)`` there depends on statistics: with a fast-growing, not yet analysed
    table the planner used only ``model`` as index condition and filtered every row of the model
    (63 ms per 1000 keys at 200k rows, growing with the table; point queries: 15 ms, constant).
    """
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    if not keys:
        return found
    if conn.dialect.name == "postgresql":
        sql = (
            f"SELECT model, prediction_id, {', '.join(columns)} FROM predictions "  # noqa: S608 (constant)
            f"WHERE model = %s AND prediction_id = %s{' FOR UPDATE' if lock else ''}"
        )
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, list(keys), returning=True)
            while True:
                for row in cursor.fetchall():
                    found[(row[0], row[1])] = tuple(row[2:])
                if not cursor.nextset():
                    break
        finally:
            cursor.close()
        return found
    # SQLite: the driver directly, in the caller's transaction. SQLAlchemy's expanding IN compiled a
    # bind parameter per key and wrapped every result row: half of a 500k-label import (measured).
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    wanted = ", ".join(predictions.c[name].name for name in columns)
    for model, ids in _group(keys).items():
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            # Column names are the schema's, values are bound.
            sql = f"SELECT prediction_id, {wanted} FROM predictions WHERE model = ? AND prediction_id IN "  # noqa: S608
            sql += f"({marks})"
            for pid, *values in dbapi.execute(sql, (model, *chunk)).fetchall():
                found[(model, pid)] = tuple(values)
    return found


def _any_pending(conn: Connection, models: set[str]) -> bool:
    """Cheap guard: parked feedback is rare, so skip the join query when a model has none."""
    if not models:
        return False
    # The driver's statement: a Core select compiled through the cache cost ~9x the query (126 µs
    # against 14 µs on SQLite), on every ingest request.
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    sql = f"SELECT 1 FROM pending_feedback WHERE model IN ({', '.join([mark] * len(models))}) LIMIT 1"  # noqa: S608
    return conn.exec_driver_sql(sql, tuple(sorted(models))).first() is not None


def _group(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for model, pid in keys:
        grouped[model].append(pid)
    return grouped


def _join_pending(conn: Connection, keys: Iterable[tuple[str, str]]) -> int:
    """Apply parked feedback to the given (landed) predictions and delete it from the parking table.

    A prediction labelled meanwhile (possible only in the cross-replica race) keeps its label; the
    parked feedback is then a duplicate or, if it disagrees, a recorded conflict. Returns the
    number of predictions labelled.
    """
    matches: list[Any] = []
    for model, ids in _group(keys).items():
        for chunk in _chunks(ids):
            query = _for_update(
                conn,
                select(
                    pending_feedback.c.pk.label("parked_pk"),
                    pending_feedback.c.model,
                    pending_feedback.c.prediction_id,
                    pending_feedback.c.correct,
                    pending_feedback.c.label,
                    pending_feedback.c.received_at,
                    predictions.c.pk.label("prediction_pk"),
                    predictions.c.predicted,
                    predictions.c.correct.label("kept_correct"),
                    predictions.c.label.label("kept_label"),
                )
                .join(
                    predictions,
                    and_(
                        predictions.c.model == pending_feedback.c.model,
                        predictions.c.prediction_id == pending_feedback.c.prediction_id,
                    ),
                )
                .where(pending_feedback.c.model == model, pending_feedback.c.prediction_id.in_(chunk)),
                of=pending_feedback,
            )
            matches.extend(conn.execute(query))
    if not matches:
        return 0
    fresh = [m for m in matches if m.kept_correct is None and m.kept_label is None]
    _apply_labels(
        conn,
        [
            (m.prediction_pk, derive_correct(m.correct, m.label, m.predicted), m.label, m.received_at)
            for m in fresh
        ],
    )
    conflicts = []
    for m in matches:
        if m.kept_correct is None and m.kept_label is None:
            continue  # labelled just now
        late = FeedbackItem(m.model, m.prediction_id, m.correct, m.label)
        if not _same_feedback("prediction", m.predicted, m.kept_correct, m.kept_label, late):
            conflicts.append(
                _conflict_row(
                    m.model, m.prediction_id, m.kept_correct, m.kept_label, m.correct, m.label, m.received_at
                )
            )
    if conflicts:
        conn.execute(feedback_conflicts.insert(), conflicts)
    parked = [m.parked_pk for m in matches]
    for start in range(0, len(parked), CHUNK):
        conn.execute(delete(pending_feedback).where(pending_feedback.c.pk.in_(parked[start : start + CHUNK])))
    return len(fresh)


def _conflict_row(
    model: str,
    prediction_id: str,
    kept_correct: bool | None,
    kept_label: str | None,
    rejected_correct: bool | None,
    rejected_label: str | None,
    received_at: float,
) -> dict[str, Any]:
    return {
        "model": model,
        "prediction_id": prediction_id,
        "kept_correct": kept_correct,
        "kept_label": kept_label,
        "rejected_correct": rejected_correct,
        "rejected_label": rejected_label,
        "received_at": received_at,
    }


# Label updates address rows by primary key (known from the locking SELECT) one statement per row,
# so every plan is a primary-key probe whatever the statistics say. A set-based UPDATE ... FROM
# unnest() was measured on PostgreSQL: with a never-analysed table the planner chose a nested loop
# rescanning the array per table row (2.2 s per 1000 labels at 50k rows) or a seq scan. psycopg 3
# pipelines executemany, so the per-row form costs no extra round trips.
#
# A label with a correctness enters the fold's work list in the same statement, and only if this
# statement set it (a label that lost the race would be counted twice). The upsert locks the row of
# a prediction still queued, so that a fold (which skips locked rows) cannot count it without the
# label before this commits; a fold holding it makes the upsert wait, then queue the label anew.
_PG_LABEL = (
    "WITH labelled AS (UPDATE predictions SET correct = %s, label = %s, labelled_at = %s "
    "WHERE pk = %s AND correct IS NULL AND label IS NULL RETURNING pk, correct) "
    "INSERT INTO fold_queue (pk, fresh) SELECT pk, false FROM labelled WHERE correct IS NOT NULL "
    "ON CONFLICT (pk) DO UPDATE SET fresh = fold_queue.fresh"
)
# SQLite: writers are serialised, so the rows chosen under the write lock are the rows updated.
_SQLITE_LABEL = (
    "UPDATE predictions SET correct = ?, label = ?, labelled_at = ? "
    "WHERE pk = ? AND correct IS NULL AND label IS NULL"
)
_SQLITE_QUEUE_LABEL = "INSERT INTO fold_queue (pk, fresh) VALUES (?, 0) ON CONFLICT (pk) DO NOTHING"


def _apply_labels(conn: Connection, labels: Sequence[tuple[int, bool | None, str | None, float]]) -> None:
    """Label still-unlabelled predictions by primary key (first label wins, also under races), and
    queue the labels for the fold."""
    if not labels:
        return
    rows = [(c, lab, t, pk) for pk, c, lab, t in labels]
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_LABEL, rows)
        return
    conn.exec_driver_sql(_SQLITE_LABEL, rows)
    counted = [(pk,) for pk, c, _, _ in labels if c is not None]
    if counted:
        conn.exec_driver_sql(_SQLITE_QUEUE_LABEL, counted)


def apply_feedback(
    conn: Connection, items: Sequence[FeedbackItem], now: float, times: Sequence[float] | None = None
) -> FeedbackOutcome:
    """Label known predictions, park feedback for unknown ones, classify duplicates and conflicts.

    ``times``: when each label was known (``calmon import`` of a history), else ``now``. Parked
    feedback is parked at ``now`` whatever its time, so that it lives the configured horizon.
    """
    keys = list(dict.fromkeys((item.model, item.prediction_id) for item in items))
    # Knowledge per key: ("prediction", predicted, correct, label) or ("pending", None, correct, label)
    state: dict[tuple[str, str], tuple[str, str | None, bool | None, str | None]] = {}
    pks: dict[tuple[str, str], int] = {}
    found = _lookup(conn, keys, ["pk", "predicted", "correct", "label"], lock=True)
    for key, (pk, predicted_label, correct, label) in found.items():
        state[key] = ("prediction", predicted_label, correct, label)
        pks[key] = pk
    _load_pending(conn, [k for k in keys if k not in state], state)

    statuses: list[FeedbackStatus] = []
    label_updates: list[tuple[int, bool | None, str | None, float]] = []
    new_pending: dict[tuple[str, str], FeedbackItem] = {}
    conflicts: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        at = now if times is None else times[position]
        key = (item.model, item.prediction_id)
        known = state.get(key)
        if known is None:
            state[key] = ("pending", None, item.correct, item.label)
            new_pending[key] = item
            statuses.append("pending")
            continue
        where, predicted_label, kept_correct, kept_label = known
        if where == "prediction" and kept_correct is None and kept_label is None:
            correct = derive_correct(item.correct, item.label, predicted_label)
            state[key] = ("prediction", predicted_label, correct, item.label)
            label_updates.append((pks[key], correct, item.label, at))
            statuses.append("matched")
            continue
        if _same_feedback(where, predicted_label, kept_correct, kept_label, item):
            statuses.append("duplicate")
            continue
        statuses.append("conflict")
        conflicts.append(
            _conflict_row(
                item.model, item.prediction_id, kept_correct, kept_label, item.correct, item.label, at
            )
        )

    if label_updates:
        _apply_labels(conn, label_updates)
    if new_pending:
        _park(conn, new_pending, now, statuses, items, conflicts)
    if conflicts:
        conn.execute(feedback_conflicts.insert(), conflicts)
    return FeedbackOutcome(statuses)


def _load_pending(
    conn: Connection,
    keys: Sequence[tuple[str, str]],
    state: dict[tuple[str, str], tuple[str, str | None, bool | None, str | None]],
) -> None:
    for model, ids in _group(keys).items():
        for chunk in _chunks(ids):
            query = select(
                pending_feedback.c.prediction_id, pending_feedback.c.correct, pending_feedback.c.label
            ).where(pending_feedback.c.model == model, pending_feedback.c.prediction_id.in_(chunk))
            for pid, correct, label in conn.execute(query):
                state[(model, pid)] = ("pending", None, correct, label)


def _park(
    conn: Connection,
    new_pending: dict[tuple[str, str], FeedbackItem],
    now: float,
    statuses: list[FeedbackStatus],
    items: Sequence[FeedbackItem],
    conflicts: list[dict[str, Any]],
) -> None:
    """Insert parked feedback; a row another replica parked meanwhile turns ours into dup/conflict."""
    stmt = _insert_ignoring_conflicts(conn, pending_feedback).returning(
        pending_feedback.c.model, pending_feedback.c.prediction_id
    )
    rows = [
        {"model": k[0], "prediction_id": k[1], "correct": f.correct, "label": f.label, "received_at": now}
        for k, f in new_pending.items()
    ]
    parked = {(m, p) for m, p in conn.execute(stmt, rows)}
    lost = [k for k in new_pending if k not in parked]
    if not lost:
        return
    state: dict[tuple[str, str], tuple[str, str | None, bool | None, str | None]] = {}
    _load_pending(conn, lost, state)
    for position, item in enumerate(items):
        key = (item.model, item.prediction_id)
        if key in state and statuses[position] == "pending" and new_pending.get(key) is item:
            _, _, kept_correct, kept_label = state[key]
            if kept_correct == item.correct and kept_label == item.label:
                statuses[position] = "duplicate"
            else:
                statuses[position] = "conflict"
                conflicts.append(
                    _conflict_row(
                        item.model,
                        item.prediction_id,
                        kept_correct,
                        kept_label,
                        item.correct,
                        item.label,
                        now,
                    )
                )


def _same_feedback(
    where: str,
    predicted_label: str | None,
    kept_correct: bool | None,
    kept_label: str | None,
    item: FeedbackItem,
) -> bool:
    if where == "pending":
        return kept_correct == item.correct and kept_label == item.label
    if item.label is not None and kept_label is not None and item.label != kept_label:
        return False
    return derive_correct(item.correct, item.label, predicted_label) == kept_correct


def reconcile_pending(conn: Connection, limit: int = 10_000) -> int:
    """Join parked feedback whose prediction has landed meanwhile (the cross-replica race)."""
    query = _for_update(
        conn,
        select(pending_feedback.c.model, pending_feedback.c.prediction_id)
        .join(
            predictions,
            and_(
                predictions.c.model == pending_feedback.c.model,
                predictions.c.prediction_id == pending_feedback.c.prediction_id,
            ),
        )
        .limit(limit),
        skip_locked=True,
        of=pending_feedback,
    )
    found = [(m, p) for m, p in conn.execute(query)]
    return _join_pending(conn, found) if found else 0


def join_parked(conn: Connection, models: set[str], limit: int = 10_000) -> int:
    """Apply all feedback parked for predictions that have landed (``calmon import``, after a chunk:
    the API joins inline, by key, what it inserts)."""
    if not _any_pending(conn, models):
        return 0
    joined = 0
    while True:
        done = reconcile_pending(conn, limit)
        joined += done
        if done < limit:
            return joined
