"""The labelled rows a recalibration reads: the last a series received, ordered by prediction time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from monitor.store.engine import READ_ONLY, create_store_engine
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.migrate import upgrade
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.training import labelled_rows


def _row(pid: str, segment: str, ts: float, p: float) -> PredictionRow:
    return PredictionRow("m", pid, segment, ts, "confidence", p, None, None, p, "identity")


def _store(engine: Engine) -> None:
    """Ten labelled rows of segment a arriving with times out of order, one unlabelled, one of b."""
    times = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    rows = [_row(f"a{k}", "a", ts, k / 10) for k, ts in enumerate(times)]
    rows += [_row("late", "a", 11.0, 0.5), _row("b0", "b", 12.0, 0.9)]
    with engine.begin() as conn:
        insert_predictions(conn, rows, 20.0)
        items = [FeedbackItem("m", f"a{k}", k % 2 == 0, None) for k in range(10)]
        apply_feedback(conn, [*items, FeedbackItem("m", "b0", True, None)], 21.0)


def test_the_last_received_labelled_rows_newest_prediction_time_first(engine: Engine) -> None:
    _store(engine)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        last = labelled_rows(conn, "m", "a", 4)
        everything = labelled_rows(conn, "m", "a", 100)
        since = labelled_rows(conn, "m", "a", 100, since=6.0)
        model_wide = labelled_rows(conn, "m", "*", 3)
    # a6..a9 arrived last (times 8, 4, 6, 10); the unlabelled one is never a candidate
    assert last.ts.tolist() == [10.0, 8.0, 6.0, 4.0]
    assert last.p.tolist() == [0.9, 0.6, 0.8, 0.7]
    assert last.y.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert everything.ts.tolist() == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert since.ts.tolist() == [10.0, 9.0, 8.0, 7.0, 6.0]
    assert model_wide.ts.tolist() == [12.0, 10.0, 6.0]  # b0, a9, a8: the three received last


def test_sqlite_reads_a_series_newest_first_through_its_index_without_sorting(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    _store(engine)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        labelled_rows(conn, "m", "a", 4)
    event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = next((s, p) for s, p in statements if "FROM predictions" in s)
    with engine.connect() as conn:
        plan = " / ".join(
            str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        )
    engine.dispose()
    assert "ix_predictions_segment_model_pk" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
