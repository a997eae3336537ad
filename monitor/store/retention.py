"""Retention: delete raw rows, parked feedback, sketch buckets and sketch batches past their horizon.

Only rows already folded into the buckets are deleted (``schema.needs_fold`` is the one definition
of "not yet folded"), in bounded batches so a large backlog never holds one long transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, select

from monitor.store.engine import READ_ONLY
from monitor.store.schema import (
    needs_fold,
    pending_feedback,
    predictions,
    sketch_batches,
    sketch_bins,
    sketch_hours,
    training_sample,
)

__all__ = [
    "delete_expired_batches",
    "delete_expired_buckets",
    "delete_expired_pending",
    "delete_folded_batch",
    "delete_folded_predictions",
    "expired_predictions",
]


def delete_folded_batch(engine: Engine, before: float, limit: int) -> int:
    """One batch of ``delete_folded_predictions``, in transactions of its own; rows deleted.

    Finding the candidates walks the table (nothing indexes ``ts``: out-of-order times would make
    such an index a random-insert B-tree), 0.15 s at 2M rows when little has expired. On SQLite that
    walk ran inside the write transaction, so ingest waited for it every retention run; it now reads
    in a snapshot of its own and only the delete, of known pks re-checked, takes the write lock.
    PostgreSQL's readers never block its writers, so there it stays one transaction (rows locked)."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            return delete_folded_predictions(conn, before, limit)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        pks = expired_predictions(conn, before, limit)
        conn.rollback()
    if not pks:
        return 0
    with engine.begin() as conn:
        return _delete_if_folded(conn, before, pks)


def expired_predictions(conn: Connection, before: float, limit: int, lock: bool = False) -> list[int]:
    """Up to ``limit`` pks of folded predictions made before ``before`` (``lock``: PostgreSQL row
    locks, skipping rows another transaction holds)."""
    expired = select(predictions.c.pk).where(predictions.c.ts < before, ~needs_fold()).limit(limit)
    if lock:
        expired = expired.with_for_update(skip_locked=True)
    return [pk for (pk,) in conn.execute(expired)]


def delete_folded_predictions(conn: Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` folded predictions made before ``before``; how many.

    On PostgreSQL the rows chosen are locked first (skipping rows a feedback transaction holds), and
    the delete, a statement later, checks again that each is off the work list: a label committed
    before the lock queued its row for the fold (the label was answered as applied), and the row
    stays; a label arriving after it waits, then finds no row and is parked as for an unknown id."""
    pks = expired_predictions(conn, before, limit, lock=conn.dialect.name == "postgresql")
    return _delete_if_folded(conn, before, pks) if pks else 0


def _delete_if_folded(conn: Connection, before: float, pks: list[int]) -> int:
    """Delete the given predictions that are still folded (a label may have queued one since)."""
    still = delete(predictions).where(predictions.c.pk.in_(pks), predictions.c.ts < before, ~needs_fold())
    return int(conn.execute(still).rowcount)


def delete_expired_pending(conn: Connection, before: float) -> int:
    """Parked feedback received before ``before`` whose prediction never came."""
    return conn.execute(delete(pending_feedback).where(pending_feedback.c.received_at < before)).rowcount


def delete_expired_buckets(conn: Connection, before: float) -> int:
    """Buckets, and the hours (``store.history``) that start before ``before``."""
    conn.execute(delete(sketch_hours).where(sketch_hours.c.hour_start < before))
    return conn.execute(delete(sketch_bins).where(sketch_bins.c.bucket_start < before)).rowcount


def delete_expired_batches(conn: Connection, buckets_before: float, sample_before: float) -> int:
    """Sketch batches whose every bucket has expired (nothing could re-add them), and training
    sample rows older than the raw rows' horizon; how many batches."""
    conn.execute(delete(training_sample).where(training_sample.c.ts < sample_before))
    t = sketch_batches.c
    expired = delete(sketch_batches).where(t.last_bucket < buckets_before, t.folded_at.is_not(None))
    return int(conn.execute(expired).rowcount)
