"""Retention's batches of raw rows: what they delete, and that ingest does not wait for their search."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor.store import retention
from monitor.store.engine import create_store_engine
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.migrate import upgrade
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.schema import fold_queue, predictions


def _row(pid: str, ts: float) -> PredictionRow:
    return PredictionRow("m", pid, "s", ts, "confidence", 0.6, None, None, 0.6, "identity")


def _folded_store(engine: Engine) -> None:
    """Old rows o0..o4 and new rows n0..n1, all counted (off the work list)."""
    with engine.begin() as conn:
        insert_predictions(conn, [_row(f"o{i}", 100.0 + i) for i in range(5)], 1.0)
        insert_predictions(conn, [_row(f"n{i}", 5000.0 + i) for i in range(2)], 1.0)
        conn.execute(fold_queue.delete())


def _stored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {pid for (pid,) in conn.execute(select(predictions.c.prediction_id))}


def test_a_batch_deletes_old_folded_rows_and_keeps_a_row_labelled_meanwhile(engine: Engine) -> None:
    _folded_store(engine)
    with engine.begin() as conn:
        apply_feedback(conn, [FeedbackItem("m", "o0", True, None)], 2.0)  # queued again: not folded
    assert retention.delete_folded_batch(engine, 1000.0, 3) == 3
    assert retention.delete_folded_batch(engine, 1000.0, 3) == 1
    assert retention.delete_folded_batch(engine, 1000.0, 3) == 0
    assert _stored(engine) == {"o0", "n0", "n1"}


def test_ingest_commits_while_sqlite_retention_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search walks the table: on SQLite it runs in a read snapshot, not under the write lock,
    and the delete re-checks what it found (a label may have queued a row in between)."""
    path = tmp_path / "store.db"
    engine = create_store_engine(f"sqlite:///{path}")
    upgrade(engine)
    _folded_store(engine)
    search = retention.expired_predictions
    wrote: list[str] = []

    def search_then_write(conn: Any, before: float, limit: int) -> list[int]:
        found = search(conn, before, limit)
        writer = sqlite3.connect(path, timeout=0)  # a busy database fails at once
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE predictions SET correct = 1 WHERE prediction_id = 'o1'")
            writer.execute(
                "INSERT INTO fold_queue (pk, fresh) SELECT pk, 0 FROM predictions WHERE prediction_id = 'o1'"
            )
            writer.execute("COMMIT")
            wrote.append("o1")
        finally:
            writer.close()
        return found

    monkeypatch.setattr(retention, "expired_predictions", search_then_write)
    try:
        deleted = retention.delete_folded_batch(engine, 1000.0, 10)
        with engine.connect() as conn:
            queued = conn.execute(select(func.count()).select_from(fold_queue)).scalar_one()
    finally:
        engine.dispose()
    assert wrote == ["o1"]  # the writer was not locked out by the search
    assert deleted == 4 and queued == 1
    assert _stored(engine) == {"o1", "n0", "n1"}  # found by the search, labelled since: kept
