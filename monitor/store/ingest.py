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

from sqlalchemy import Connection, and_, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.records import (
    FeedbackItem,
    FeedbackOutcome,
    FeedbackStatus,
    PredictionOutcome,
    PredictionResult,
    PredictionRow,
)
from monitor.store.schema import feedback_conflicts, pending_feedback, predictions

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
    params = [
        {
            "model": r.model,
            "prediction_id": r.prediction_id,
            "segment": r.segment,
            "ts": r.ts,
            "received_at": now,
            "input_kind": r.input_kind,
            "raw_confidence": r.raw_confidence,
            "predicted": r.predicted,
            "vector": r.vector,
            "calibrated_confidence": r.calibrated_confidence,
            "calibrator_version": r.calibrator_version,
        }
        for r in first.values()
    ]
    inserted: set[tuple[str, str]] = set()
    if params:
        stmt = _insert_ignoring_conflicts(conn, predictions).returning(
            predictions.c.model, predictions.c.prediction_id
        )
        inserted = {(m, p) for m, p in conn.execute(stmt, params)}

    stored: dict[tuple[str, str], tuple[float, str]] = {}
    missing = [key for key in first if key not in inserted]
    for model, ids in _group(missing).items():
        for chunk in _chunks(ids):
            query = select(
                predictions.c.prediction_id,
                predictions.c.calibrated_confidence,
                predictions.c.calibrator_version,
            ).where(predictions.c.model == model, predictions.c.prediction_id.in_(chunk))
            for pid, calibrated, version in conn.execute(query):
                stored[(model, pid)] = (calibrated, version)

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

    joined = _join_pending(conn, inserted, {k: first[k].predicted for k in inserted})
    return PredictionOutcome(
        results=results,
        accepted=len(inserted),
        duplicates=len(rows) - len(inserted),
        labelled_from_pending=joined,
    )


def _group(keys: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for model, pid in keys:
        grouped[model].append(pid)
    return grouped


def _join_pending(
    conn: Connection, keys: Iterable[tuple[str, str]], predicted: dict[tuple[str, str], str | None]
) -> int:
    """Apply parked feedback to just-inserted predictions and delete it from the parking table."""
    matches: list[tuple[str, str, bool | None, str | None, float]] = []
    for model, ids in _group(keys).items():
        for chunk in _chunks(ids):
            query = _for_update(
                conn,
                select(
                    pending_feedback.c.prediction_id,
                    pending_feedback.c.correct,
                    pending_feedback.c.label,
                    pending_feedback.c.received_at,
                ).where(pending_feedback.c.model == model, pending_feedback.c.prediction_id.in_(chunk)),
            )
            for pid, correct, label, received_at in conn.execute(query):
                matches.append((model, pid, correct, label, received_at))
    if not matches:
        return 0
    _apply_labels(
        conn,
        [
            (model, pid, derive_correct(correct, label, predicted.get((model, pid))), label, received_at)
            for model, pid, correct, label, received_at in matches
        ],
    )
    conn.execute(
        delete(pending_feedback).where(
            pending_feedback.c.model == bindparam("m"), pending_feedback.c.prediction_id == bindparam("p")
        ),
        [{"m": model, "p": pid} for model, pid, *_ in matches],
    )
    return len(matches)


def _apply_labels(
    conn: Connection, labels: Sequence[tuple[str, str, bool | None, str | None, float]]
) -> None:
    conn.execute(
        update(predictions)
        .where(
            and_(
                predictions.c.model == bindparam("m"),
                predictions.c.prediction_id == bindparam("p"),
                predictions.c.correct.is_(None),
                predictions.c.label.is_(None),
            )
        )
        .values(correct=bindparam("c"), label=bindparam("l"), labelled_at=bindparam("t")),
        [{"m": m, "p": p, "c": c, "l": lab, "t": t} for m, p, c, lab, t in labels],
    )


def apply_feedback(conn: Connection, items: Sequence[FeedbackItem], now: float) -> FeedbackOutcome:
    """Label known predictions, park feedback for unknown ones, classify duplicates and conflicts."""
    keys = list(dict.fromkeys((item.model, item.prediction_id) for item in items))
    # Current knowledge per key: ("prediction", predicted, correct, label) or ("pending", None, correct, label)
    state: dict[tuple[str, str], tuple[str, str | None, bool | None, str | None]] = {}
    for model, ids in _group(keys).items():
        for chunk in _chunks(ids):
            query = _for_update(
                conn,
                select(
                    predictions.c.prediction_id,
                    predictions.c.predicted,
                    predictions.c.correct,
                    predictions.c.label,
                ).where(predictions.c.model == model, predictions.c.prediction_id.in_(chunk)),
            )
            for pid, predicted_label, correct, label in conn.execute(query):
                state[(model, pid)] = ("prediction", predicted_label, correct, label)
    _load_pending(conn, [k for k in keys if k not in state], state)

    statuses: list[FeedbackStatus] = []
    label_updates: list[tuple[str, str, bool | None, str | None, float]] = []
    new_pending: dict[tuple[str, str], FeedbackItem] = {}
    conflicts: list[dict[str, Any]] = []
    for item in items:
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
            label_updates.append((item.model, item.prediction_id, correct, item.label, now))
            statuses.append("matched")
            continue
        if _same_feedback(where, predicted_label, kept_correct, kept_label, item):
            statuses.append("duplicate")
            continue
        statuses.append("conflict")
        conflicts.append(
            {
                "model": item.model,
                "prediction_id": item.prediction_id,
                "kept_correct": kept_correct,
                "kept_label": kept_label,
                "rejected_correct": item.correct,
                "rejected_label": item.label,
                "received_at": now,
            }
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
                    {
                        "model": item.model,
                        "prediction_id": item.prediction_id,
                        "kept_correct": kept_correct,
                        "kept_label": kept_label,
                        "rejected_correct": item.correct,
                        "rejected_label": item.label,
                        "received_at": now,
                    }
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
        select(
            pending_feedback.c.model,
            pending_feedback.c.prediction_id,
            predictions.c.predicted,
        )
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
    found = [(m, p, predicted_label) for m, p, predicted_label in conn.execute(query)]
    if not found:
        return 0
    return _join_pending(conn, [(m, p) for m, p, _ in found], {(m, p): pl for m, p, pl in found})
