"""Every validation rule: the 4xx names the record index and the field, and nothing else is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.config import Settings
from tests.helpers import counts, post_feedback, post_predictions, pred

FUTURE = "2999-01-01T00:00:00Z"

BAD_PREDICTIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("confidence above 1", pred("x", 1.5), "confidence", "outside [0, 1]"),
    ("confidence below 0", pred("x", -0.1), "confidence", "outside [0, 1]"),
    ("confidence a string", pred("x", "0.5"), "confidence", "valid number"),  # type: ignore[arg-type]
    ("confidence a bool", pred("x", True), "confidence", "valid number"),
    ("no confidence form", {"model": "qa-bot", "id": "x"}, "confidence", "exactly one of"),
    ("two confidence forms", {**pred("x"), "probs": [0.5, 0.5]}, "probs", "exactly one of"),
    ("empty id", pred(""), "id", "at least 1 character"),
    ("blank id", pred("   "), "id", "not blank, without control characters"),
    ("id not a string", {**pred("x"), "id": 7}, "id", "valid string"),
    ("missing model", {"id": "x", "confidence": 0.5}, "model", "field required"),
    ("unknown field", {**pred("x"), "confidense": 0.5}, "confidense", "unknown field"),
    ("naive timestamp", pred("x", ts="2026-11-28T12:00:00"), "ts", "no time zone"),
    ("garbage timestamp", pred("x", ts="yesterday"), "ts", "RFC 3339"),
    ("future timestamp", pred("x", ts=FUTURE), "ts", "in the future"),
    ("negative epoch", pred("x", ts=-5), "ts", "before 1970"),
    ("probs not summing to 1", {"model": "m", "id": "x", "probs": [0.5, 0.6]}, "probs", "sum to"),
    ("probs single class", {"model": "m", "id": "x", "probs": [1.0]}, "probs", "at least 2"),
    ("probs negative", {"model": "m", "id": "x", "probs": [-0.5, 1.5]}, "probs", "not a probability"),
    ("logits empty", {"model": "m", "id": "x", "logits": []}, "logits", "at least 2"),
    (
        "positive logprob",
        {"model": "m", "id": "x", "token_logprobs": [-0.1, 0.5]},
        "token_logprobs",
        "positive",
    ),
    ("empty logprobs", {"model": "m", "id": "x", "token_logprobs": []}, "token_logprobs", "empty"),
    ("oversize logits", {"model": "m", "id": "x", "logits": [0.0] * 5000}, "logits", "exceed the limit"),
    ("oversize id", pred("x" * 300), "id", "at most 256"),
    ("oversize predicted", pred("x", predicted="y" * 300), "predicted", "at most 256"),
    ("segment empty", pred("x", segment=""), "segment", "at least 1"),
    ("segment reserved", pred("x", segment="*"), "segment", "reserved"),
    ("record not an object", [1, 2], "record", "valid dictionary"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("case", "record", "field", "message"), BAD_PREDICTIONS, ids=[c[0] for c in BAD_PREDICTIONS]
)
def test_bad_prediction_is_named_and_nothing_written(
    client: TestClient, engine: Engine, case: str, record: Any, field: str, message: str
) -> None:
    # Alone, the record makes an all-invalid batch: 422 and nothing written.
    alone = post_predictions(client, [record])
    assert alone.status_code == 422, alone.text
    body = alone.json()
    assert body["rejected"][0]["index"] == 0
    assert body["rejected"][0]["field"] == field
    assert message in body["rejected"][0]["error"]
    assert counts(engine)["predictions"] == 0
    # In a mixed batch, the good records are committed and the bad one is listed by index.
    mixed = post_predictions(client, [pred("good-1"), record, pred("good-2")])
    assert mixed.status_code == 200, mixed.text
    body = mixed.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, field)]
    assert [r["index"] for r in body["results"]] == [0, 2]
    assert counts(engine)["predictions"] == 2


def test_nan_and_infinity_are_named(client: TestClient, engine: Engine) -> None:
    raw = (
        '{"predictions": [{"model": "m", "id": "a", "confidence": 0.5},'
        ' {"model": "m", "id": "b", "confidence": NaN}, {"model": "m", "id": "c", "logits": [1, Infinity]}]}'
    )
    response = client.post("/v1/predictions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    rejected = response.json()["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [(1, "confidence"), (2, "logits[1]")]
    assert "finite" in rejected[0]["error"]
    assert counts(engine)["predictions"] == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[]", 422, "body"),
        (b'{"records": []}', 422, "records"),
        (b'{"predictions": {}}', 422, "predictions"),
        (b'{"predictions": [], "extra": 1}', 422, "extra"),
        (b"{}", 422, "predictions"),
    ],
)
def test_malformed_bodies(client: TestClient, engine: Engine, body: bytes, status: int, field: str) -> None:
    response = client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert counts(engine)["predictions"] == 0


def test_batch_and_body_limits(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    client = make_client(
        make_settings(limits={"max_batch_records": 3, "max_body_bytes": 2048, "max_vector_length": 4})
    )
    too_many = post_predictions(client, [pred(f"p{i}") for i in range(4)])
    assert too_many.status_code == 413 and too_many.json()["field"] == "predictions"
    too_big = client.post(
        "/v1/predictions",
        content=json.dumps({"predictions": [pred("x" * 3000)]}),
        headers={"content-type": "application/json"},
    )
    assert too_big.status_code == 413 and too_big.json()["field"] == "body"
    long_vector = post_predictions(client, [{"model": "m", "id": "v", "logits": [0.0] * 5}])
    assert long_vector.status_code == 422 and long_vector.json()["rejected"][0]["field"] == "logits"
    assert counts(engine)["predictions"] == 0


def test_body_limit_enforced_without_content_length(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings]
) -> None:
    client = make_client(make_settings(limits={"max_body_bytes": 1024}))

    def chunks() -> Any:
        yield b'{"predictions": ['
        for _ in range(100):
            yield b'{"model": "m", "id": "x", "confidence": 0.5},'
        yield b"]}"

    response = client.post("/v1/predictions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


BAD_FEEDBACK: list[tuple[str, dict[str, Any], str, str]] = [
    ("neither correct nor label", {"model": "qa-bot", "id": "p"}, "correct", "exactly one of"),
    (
        "both correct and label",
        {"model": "qa-bot", "id": "p", "correct": True, "label": "a"},
        "label",
        "exactly one of",
    ),
    ("correct not a bool", {"model": "qa-bot", "id": "p", "correct": "yes"}, "correct", "valid boolean"),
    ("correct a number", {"model": "qa-bot", "id": "p", "correct": 1}, "correct", "valid boolean"),
    ("empty id", {"model": "qa-bot", "id": "", "correct": True}, "id", "at least 1"),
    ("unknown field", {"model": "qa-bot", "id": "p", "correct": True, "score": 1}, "score", "unknown field"),
    ("oversize label", {"model": "qa-bot", "id": "p", "label": "z" * 300}, "label", "at most 256"),
]


@pytest.mark.parametrize(
    ("case", "record", "field", "message"), BAD_FEEDBACK, ids=[c[0] for c in BAD_FEEDBACK]
)
def test_bad_feedback_is_named_and_nothing_written(
    client: TestClient, engine: Engine, case: str, record: dict[str, Any], field: str, message: str
) -> None:
    post_predictions(client, [pred("p"), pred("q")])
    alone = post_feedback(client, [record])
    assert alone.status_code == 422, alone.text
    rejection = alone.json()["rejected"][0]
    assert (rejection["index"], rejection["field"]) == (0, field)
    assert message in rejection["error"]
    assert counts(engine)["labelled"] == 0 and counts(engine)["pending"] == 0
    mixed = post_feedback(client, [{"model": "qa-bot", "id": "q", "correct": True}, record])
    assert mixed.status_code == 200
    assert mixed.json()["matched"] == 1
    assert [(r["index"], r["field"]) for r in mixed.json()["rejected"]] == [(1, field)]
    assert counts(engine)["labelled"] == 1 and counts(engine)["pending"] == 0


def test_query_and_path_errors_are_4xx(client: TestClient) -> None:
    assert client.get("/v1/models/" + "x" * 10).status_code == 404
    assert client.post("/v1/models").status_code == 405
