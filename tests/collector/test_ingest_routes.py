"""Prediction and feedback ingest through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.config import Settings
from tests.helpers import counts, post_feedback, post_predictions, pred, stored


def test_prediction_batch_returns_calibrated_scores_and_counts(client: TestClient, engine: Engine) -> None:
    response = post_predictions(
        client, [pred("p1", 0.92, segment="billing", ts="2026-11-28T12:00:00Z"), pred("p2", 0.4)]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0 and body["rejected"] == []
    assert [r["id"] for r in body["results"]] == ["p1", "p2"]
    assert body["results"][0]["calibrated_confidence"] == pytest.approx(0.92)
    assert body["results"][0]["calibrator_version"] == "identity"
    row = stored(engine, "p1")
    assert row.segment == "billing" and row.raw_confidence == pytest.approx(0.92)
    assert row.ts == pytest.approx(1795867200.0)  # 2026-11-28T12:00:00Z
    assert stored(engine, "p2").segment == "default"
    assert row.correct is None


def test_probs_logits_and_token_logprobs(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    settings = make_settings(models={"llm-sum": {"token_aggregation": "sum"}})
    client = make_client(settings)
    records = [
        {"model": "clf", "id": "a", "probs": [0.1, 0.7, 0.2]},
        {"model": "clf", "id": "b", "logits": [1.0, 3.0, 0.5]},
        {"model": "llm", "id": "c", "token_logprobs": [-0.1, -0.3, -0.2]},
        {"model": "llm-sum", "id": "d", "token_logprobs": [-0.1, -0.3, -0.2]},
        {"model": "clf", "id": "e", "probs": [0.3, 0.7], "predicted": "yes"},
    ]
    body = post_predictions(client, records).json()
    assert body["accepted"] == 5, body
    scores = {r["id"]: r["calibrated_confidence"] for r in body["results"]}
    assert scores["a"] == pytest.approx(0.7)
    exp = [math.exp(v) for v in (1.0, 3.0, 0.5)]
    assert scores["b"] == pytest.approx(max(exp) / sum(exp))
    assert scores["c"] == pytest.approx(math.exp(-0.2))  # geometric mean of token probabilities
    assert scores["d"] == pytest.approx(math.exp(-0.6))  # sequence probability
    a = stored(engine, "a", model="clf")
    assert a.predicted == "1" and a.input_kind == "probs"
    assert struct.unpack("<3f", a.vector) == pytest.approx((0.1, 0.7, 0.2), abs=1e-7)
    assert stored(engine, "b", model="clf").predicted == "1"
    assert stored(engine, "e", model="clf").predicted == "yes"
    assert stored(engine, "c", model="llm").vector is None


def test_duplicate_predictions_are_idempotent(client: TestClient, engine: Engine) -> None:
    assert post_predictions(client, [pred("p1", 0.9)]).json()["accepted"] == 1
    body = post_predictions(client, [pred("p1", 0.3), pred("p2", 0.5), pred("p2", 0.6)]).json()
    assert body["accepted"] == 1 and body["duplicates"] == 2
    assert [r["duplicate"] for r in body["results"]] == [True, False, True]
    # the duplicate reports the stored (first) score, and nothing was overwritten
    assert body["results"][0]["calibrated_confidence"] == pytest.approx(0.9)
    assert stored(engine, "p1").raw_confidence == pytest.approx(0.9)
    assert stored(engine, "p2").raw_confidence == pytest.approx(0.5)
    assert counts(engine)["predictions"] == 2


def test_feedback_outcomes(client: TestClient, engine: Engine) -> None:
    post_predictions(client, [pred("p1"), pred("p2", predicted="cat"), pred("p3")])
    body = post_feedback(
        client,
        [
            {"model": "qa-bot", "id": "p1", "correct": True},
            {"model": "qa-bot", "id": "p2", "label": "dog"},
            {"model": "qa-bot", "id": "p9", "correct": False},
            {"model": "qa-bot", "id": "p1", "correct": True},
            {"model": "qa-bot", "id": "p3", "correct": True},
            {"model": "qa-bot", "id": "p3", "correct": False},
        ],
    ).json()
    assert body == {"matched": 3, "pending": 1, "duplicates": 1, "conflicts": 1, "rejected": []}
    assert stored(engine, "p1").correct is True
    assert stored(engine, "p2").correct is False and stored(engine, "p2").label == "dog"
    assert stored(engine, "p3").correct is True  # first label wins
    assert counts(engine) == {"predictions": 3, "labelled": 3, "pending": 1, "conflicts": 1}


def test_repeated_feedback_batches(client: TestClient, engine: Engine) -> None:
    post_predictions(client, [pred("p1", predicted="cat")])
    assert post_feedback(client, [{"model": "qa-bot", "id": "p1", "label": "cat"}]).json()["matched"] == 1
    again = post_feedback(
        client,
        [{"model": "qa-bot", "id": "p1", "label": "cat"}, {"model": "qa-bot", "id": "p1", "correct": True}],
    ).json()
    assert again["duplicates"] == 2 and again["conflicts"] == 0
    other = post_feedback(client, [{"model": "qa-bot", "id": "p1", "label": "dog"}]).json()
    assert other["conflicts"] == 1
    assert stored(engine, "p1").correct is True and stored(engine, "p1").label == "cat"


def test_early_feedback_is_joined_when_the_prediction_lands(client: TestClient, engine: Engine) -> None:
    body = post_feedback(
        client,
        [
            {"model": "qa-bot", "id": "late", "correct": False},
            {"model": "qa-bot", "id": "late-label", "label": "cat"},
        ],
    ).json()
    assert body["pending"] == 2
    assert (
        post_feedback(client, [{"model": "qa-bot", "id": "late", "correct": False}]).json()["duplicates"] == 1
    )
    assert (
        post_feedback(client, [{"model": "qa-bot", "id": "late", "correct": True}]).json()["conflicts"] == 1
    )
    landed = post_predictions(client, [pred("late", 0.95), pred("late-label", 0.6, predicted="cat")]).json()
    assert landed["labelled_from_pending"] == 2
    assert stored(engine, "late").correct is False
    assert stored(engine, "late-label").correct is True
    assert counts(engine)["pending"] == 0


def test_model_endpoints(client: TestClient) -> None:
    post_predictions(
        client, [pred("a", 0.9), pred("b", 0.7, segment="billing"), pred("c", 0.5, model="other")]
    )
    post_feedback(
        client,
        [{"model": "qa-bot", "id": "a", "correct": True}, {"model": "qa-bot", "id": "zz", "correct": True}],
    )
    models = client.get("/v1/models").json()["models"]
    assert {m["model"] for m in models} == {"qa-bot", "other"}
    detail = client.get("/v1/models/qa-bot").json()
    assert detail["predictions"] == 2 and detail["labelled"] == 1 and detail["pending_feedback"] == 1
    assert detail["label_coverage"] == pytest.approx(0.5)
    segments = {s["segment"]: s for s in detail["segments"]}
    assert segments["default"]["accuracy"] == 1.0
    assert segments["default"]["mean_confidence_labelled"] == pytest.approx(0.9)
    assert segments["billing"]["labelled"] == 0
    assert detail["calibrators"] == [] and "windows" in detail
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "model"


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictionBatch"}
    record = spec["components"]["schemas"]["PredictionIn"]["properties"]
    assert {"model", "id", "segment", "ts", "confidence", "probs", "logits", "token_logprobs"} <= set(record)
    assert "/v1/feedback" in spec["paths"] and "/v1/models/{model}" in spec["paths"]


def test_stored_vectors_round_trip() -> None:
    from monitor.store.vectors import pack_vector, unpack_vector

    values = [0.1, -2.5, 3.25, 1e-3]
    assert unpack_vector(pack_vector(values)) == pytest.approx(values, rel=1e-6)  # float32 storage
    assert len(pack_vector(values)) == 16
