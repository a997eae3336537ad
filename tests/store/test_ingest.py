"""Store-level ingest: the reconciler closes the prediction/feedback race between replicas."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from monitor.store.ingest import apply_feedback, insert_predictions, reconcile_pending
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.schema import pending_feedback, predictions
from tests.helpers import counts, stored


def row(pid: str, predicted: str | None = None) -> PredictionRow:
    return PredictionRow("qa-bot", pid, "default", 1.0, "confidence", 0.8, predicted, None, 0.8, "identity")


def test_reconcile_joins_feedback_parked_while_its_prediction_landed(engine: Engine) -> None:
    # The race: each transaction ran before the other committed, so neither saw the other.
    with engine.begin() as conn:
        conn.execute(
            insert(predictions),
            [
                {
                    "model": "qa-bot",
                    "prediction_id": pid,
                    "segment": "default",
                    "ts": 1.0,
                    "received_at": 1.0,
                    "input_kind": "confidence",
                    "raw_confidence": 0.8,
                    "predicted": predicted,
                    "calibrated_confidence": 0.8,
                    "calibrator_version": "identity",
                }
                for pid, predicted in (("a", None), ("b", "cat"))
            ],
        )
        conn.execute(
            insert(pending_feedback),
            [
                {
                    "model": "qa-bot",
                    "prediction_id": "a",
                    "correct": False,
                    "label": None,
                    "received_at": 2.0,
                },
                {
                    "model": "qa-bot",
                    "prediction_id": "b",
                    "correct": None,
                    "label": "cat",
                    "received_at": 2.0,
                },
                {
                    "model": "qa-bot",
                    "prediction_id": "never",
                    "correct": True,
                    "label": None,
                    "received_at": 2.0,
                },
            ],
        )
    with engine.begin() as conn:
        assert reconcile_pending(conn) == 2
    assert stored(engine, "a").correct is False and stored(engine, "a").labelled_at == 2.0
    assert stored(engine, "b").correct is True
    assert counts(engine)["pending"] == 1  # the one whose prediction never came stays parked
    with engine.begin() as conn:
        assert reconcile_pending(conn) == 0


@pytest.mark.parametrize("rounds", [30])
def test_concurrent_predictions_and_feedback_end_fully_joined(engine: Engine, rounds: int) -> None:
    errors: list[BaseException] = []

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        return run

    for r in range(rounds):
        ids = [f"r{r}-{i}" for i in range(20)]

        def predict(ids: list[str] = ids) -> None:
            with engine.begin() as conn:
                insert_predictions(conn, [row(pid) for pid in ids], now=5.0)

        def feedback(ids: list[str] = ids) -> None:
            with engine.begin() as conn:
                apply_feedback(conn, [FeedbackItem("qa-bot", pid, True, None) for pid in ids], now=6.0)

        threads = [threading.Thread(target=guarded(predict)), threading.Thread(target=guarded(feedback))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    with engine.begin() as conn:
        reconcile_pending(conn)
    assert counts(engine) == {
        "predictions": 20 * rounds,
        "labelled": 20 * rounds,
        "pending": 0,
        "conflicts": 0,
    }


def test_parked_feedback_meeting_a_labelled_prediction_is_a_duplicate_or_recorded_conflict(
    engine: Engine,
) -> None:
    # The race once more, but the prediction was labelled directly meanwhile.
    with engine.begin() as conn:
        insert_predictions(conn, [row("same"), row("differs")], now=1.0)
        apply_feedback(
            conn,
            [FeedbackItem("qa-bot", "same", True, None), FeedbackItem("qa-bot", "differs", True, None)],
            now=2.0,
        )
        conn.execute(
            insert(pending_feedback),
            [
                {
                    "model": "qa-bot",
                    "prediction_id": "same",
                    "correct": True,
                    "label": None,
                    "received_at": 3.0,
                },
                {
                    "model": "qa-bot",
                    "prediction_id": "differs",
                    "correct": False,
                    "label": None,
                    "received_at": 3.0,
                },
            ],
        )
    with engine.begin() as conn:
        assert reconcile_pending(conn) == 0  # nothing newly labelled
    assert stored(engine, "differs").correct is True  # first label kept
    assert counts(engine) == {"predictions": 2, "labelled": 2, "pending": 0, "conflicts": 1}


@pytest.mark.postgres
def test_a_key_lookup_on_a_fresh_postgresql_store_probes_the_unique_index(pg_url: str) -> None:
    """The feedback lookup is prepared once and reused (psycopg prepares after five executions), and a
    generic plan made before the table was first analysed is kept as it grows. With an index leading
    on ``model`` besides the unique one, that plan took the other index on ``model`` alone and
    filtered every row of the model: a 3000-label request passed the 4 s deadline at 6000 rows."""
    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import upgrade

    engine = create_store_engine(pg_url)
    upgrade(engine)
    try:
        with engine.begin() as conn:
            insert_predictions(conn, [row(f"p{i}") for i in range(2000)], 1.0)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(
                "PREPARE lookup (text, text) AS SELECT pk FROM predictions "
                "WHERE model = $1 AND prediction_id = $2 FOR UPDATE"
            )
            cursor.execute("EXPLAIN EXECUTE lookup ('qa-bot', 'p7')")
            plan = "\n".join(line for (line,) in cursor.fetchall())
    finally:
        engine.dispose()
    assert "uq_predictions_model_prediction_id" in plan, plan
    assert "Filter" not in plan, plan
