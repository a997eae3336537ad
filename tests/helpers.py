"""Small helpers shared by API tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, func, insert, select

from monitor.store.schema import feedback_conflicts, fold_queue, pending_feedback, predictions


def pred(pid: str, confidence: float = 0.8, model: str = "qa-bot", **extra: Any) -> dict[str, Any]:
    return {"model": model, "id": pid, "confidence": confidence, **extra}


def post_predictions(client: TestClient, records: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.post("/v1/predictions", json={"predictions": records}, **kwargs)


def post_feedback(client: TestClient, records: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.post("/v1/feedback", json={"feedback": records}, **kwargs)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "predictions": conn.execute(select(func.count()).select_from(predictions)).scalar_one(),
            "labelled": conn.execute(
                select(func.count()).select_from(predictions).where(predictions.c.correct.is_not(None))
            ).scalar_one(),
            "pending": conn.execute(select(func.count()).select_from(pending_feedback)).scalar_one(),
            "conflicts": conn.execute(select(func.count()).select_from(feedback_conflicts)).scalar_one(),
        }


def stored(engine: Engine, pid: str, model: str = "qa-bot") -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(predictions).where(predictions.c.model == model, predictions.c.prediction_id == pid)
        ).one_or_none()


def fold_states(conn: Connection) -> dict[str, int]:
    """Each prediction's fold state by id, as the numbers the fold once stored in the row: 0 not
    counted, 1 counted as a prediction (its label, if any, still queued), 2 its label counted too."""
    queued = dict(conn.execute(select(fold_queue.c.pk, fold_queue.c.fresh)).all())
    rows = conn.execute(select(predictions.c.pk, predictions.c.prediction_id, predictions.c.correct))
    return {
        pid: (0 if queued[pk] else 1) if pk in queued else (1 if correct is None else 2)
        for pk, pid, correct in rows
    }


def queue_as(conn: Connection, states: dict[int, tuple[int, bool | None]]) -> None:
    """Put predictions (by pk: their fold state as in ``fold_states``, and correctness) on the fold's
    work list as a fold in that state would have left them."""
    rows = [
        {"pk": pk, "fresh": state == 0}
        for pk, (state, correct) in states.items()
        if state == 0 or (state == 1 and correct is not None)
    ]
    if rows:
        conn.execute(insert(fold_queue), rows)
