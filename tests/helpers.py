"""Small helpers shared by API tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from monitor.store.schema import feedback_conflicts, pending_feedback, predictions


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
