"""A statement the database cancels or a connection it drops is a 503 with Retry-After, also where
the store reads through the driver's own cursor (whose errors SQLAlchemy does not wrap)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from monitor.collector.api import create_app
from monitor.config import DatabaseConfig, load_settings
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from tests.helpers import post_feedback, post_predictions, pred


@pytest.mark.postgres
def test_feedback_waiting_past_the_statement_timeout_gets_503_and_changes_nothing(pg_url: str) -> None:
    """Another transaction holds the prediction's row: the feedback's locking lookup (a driver
    cursor) waits until PostgreSQL cancels it."""
    database = DatabaseConfig(statement_timeout_seconds=1.0)
    engine = create_store_engine(pg_url, database)
    upgrade(engine)
    settings = load_settings(None, database_url=pg_url, database={"statement_timeout_seconds": 1.0})
    holder = engine.connect()
    try:
        with TestClient(create_app(settings, engine)) as client:
            assert post_predictions(client, [pred("p1")]).status_code == 200
            transaction = holder.begin()
            holder.execute(text("SELECT pk FROM predictions WHERE prediction_id = 'p1' FOR UPDATE"))
            answer = post_feedback(client, [{"model": "qa-bot", "id": "p1", "correct": True}])
            transaction.rollback()
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"] == "database unavailable; retry later"
            again = post_feedback(client, [{"model": "qa-bot", "id": "p1", "correct": True}])
            assert again.status_code == 200 and again.json()["matched"] == 1  # nothing was half-applied
    finally:
        holder.close()
        engine.dispose()
