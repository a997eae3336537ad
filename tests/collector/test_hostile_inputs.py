"""Each hostile input found by the hardening review, on SQLite and a real PostgreSQL: a 4xx naming the
field (and the record), the rest of a mixed batch committed, never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.conftest import MakeClient, MakeSettings
from tests.helpers import counts, post_feedback, post_predictions, pred

BIG = 2**63  # one past BIGINT


def mixed(bad: dict[str, Any]) -> list[dict[str, Any]]:
    return [pred("ok-1"), bad, pred("ok-2")]


@pytest.mark.parametrize("field", ["model", "id", "segment", "predicted"])
@pytest.mark.parametrize("character", ["\u0000", "\u0007", "\u001f", "\u007f"])
def test_a_control_character_in_a_name_rejects_that_record_only(
    client: TestClient, engine: Engine, field: str, character: str
) -> None:
    bad = pred("bad") | {field: f"a{character}b"}
    response = post_predictions(client, mixed(bad))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2 and [(r["index"], r["field"]) for r in body["rejected"]] == [(1, field)]
    assert "control characters" in body["rejected"][0]["error"]
    assert counts(engine)["predictions"] == 2


def test_a_control_character_in_a_feedback_label_rejects_that_record_only(
    client: TestClient, engine: Engine
) -> None:
    post_predictions(client, [pred("p1", predicted="cat"), pred("p2", predicted="dog")])
    response = post_feedback(
        client,
        [
            {"model": "qa-bot", "id": "p1", "label": "ca\u0000t"},
            {"model": "qa-bot", "id": "p2", "label": "dog"},
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["matched"] == 1
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [(0, "label")]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/a%00b",
        "/v1/models/a%00b/reliability",
        "/v1/models/qa-bot/reliability?segment=x%00y",
        "/v1/events?model=a%00b",
        "/v1/events?kind=a%00b",
        "/v1/calibrators?model=a%00b",
    ],
)
def test_a_nul_in_a_path_or_query_is_a_422_naming_it(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["field"] in ("model", "segment", "kind")


def test_logits_beyond_float32_are_rejected_not_overflowed(client: TestClient, engine: Engine) -> None:
    bad = {"model": "qa-bot", "id": "huge", "logits": [1e39, 0.0]}
    response = post_predictions(client, mixed(bad))
    assert response.status_code == 200, response.text
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [(1, "logits[0]")]
    assert "float32" in response.json()["rejected"][0]["error"]
    assert counts(engine)["predictions"] == 2
    scored = client.post(
        "/v1/calibrate",
        json={
            "records": [{"model": "qa-bot", "logits": [0.0, -1e39]}, {"model": "qa-bot", "confidence": 0.5}]
        },
    )
    assert scored.status_code == 200 and scored.json()["rejected"][0]["field"] == "logits[1]"


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("get", f"/v1/calibrators/{BIG}", "calibrator_id"),
        ("get", f"/v1/calibrators/{BIG}/report", "calibrator_id"),
        ("post", f"/v1/calibrators/{BIG}/rollback", "calibrator_id"),
        ("get", f"/v1/events?before_id={BIG}", "before_id"),
        ("get", "/v1/events?limit=0", "limit"),
        ("get", "/v1/calibrators/1/report?format=pdf", "format"),
    ],
)
def test_out_of_range_ids_and_unknown_formats_are_a_422(
    client: TestClient, method: str, path: str, field: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_deeply_nested_json_is_a_400(client: TestClient) -> None:
    body = b'{"predictions": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}"
    response = client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_a_lone_surrogate_is_rejected_and_echoed_safely(client: TestClient, engine: Engine) -> None:
    # json.dumps writes the lone surrogate as the escape \udfff (valid JSON, not valid UTF-8 text)
    body = json.dumps({"predictions": mixed(pred("x\udfff"))}).encode()
    response = client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    rejected = response.json()["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [(1, "id")]
    assert counts(engine)["predictions"] == 2


def test_a_label_too_large_for_64_bits_says_what_is_expected(client: TestClient) -> None:
    response = post_predictions(client, mixed(pred("big", predicted=2**70)))
    assert response.status_code == 200, response.text
    rejection = response.json()["rejected"][0]
    assert (
        rejection["field"] == "predicted"
        and "a string" in rejection["error"]
        and "64-bit integer" in rejection["error"]
    )


def test_a_timestamp_beyond_the_retention_horizon_is_rejected_naming_it(
    client: TestClient, engine: Engine
) -> None:
    response = post_predictions(client, mixed(pred("old", ts="2015-01-01T00:00:00Z")))
    assert response.status_code == 200, response.text
    rejection = response.json()["rejected"][0]
    assert rejection["field"] == "ts" and "30 days" in rejection["error"] and "raw_days" in rejection["error"]
    assert counts(engine)["predictions"] == 2


def test_invented_field_names_never_become_metric_label_values(client: TestClient) -> None:
    records = [pred(f"x{i}") | {f"field_{i}": 1} for i in range(50)]
    assert post_predictions(client, records).status_code == 422
    metrics = client.get("/metrics").text
    reasons = {
        line.split('reason="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("calmon_rejected_records_total{")
    }
    assert reasons == {"unknown_field"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_sent_as_json_is_a_415(client: TestClient, content_type: str | None) -> None:
    body = json.dumps({"predictions": [pred("p")]})
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/predictions", content=body, headers=headers)
    assert response.status_code == 415 and response.json()["field"] == "content-type"


def test_docs_and_redoc_load_their_assets_from_calmon_itself(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "http://" not in html and "https://" not in html
        assets = [part.split('"')[0] for part in html.split('src="')[1:]] + [
            part.split('"')[0] for part in html.split('href="')[1:]
        ]
        assert assets, html
        for asset in assets:
            assert asset.startswith("/"), asset
            response = client.get(asset)
            assert response.status_code == 200, asset
            assert "cdn.redoc.ly" not in response.text, asset  # the ReDoc bundle's remote logo, rewritten


def test_models_beyond_the_cap_are_refused_naming_the_field_and_never_become_labels(
    make_client: MakeClient, make_settings: MakeSettings, engine: Engine
) -> None:
    client = make_client(make_settings(limits={"max_models": 2}))
    first = post_predictions(client, [pred("a1", model="m1"), pred("b1", model="m2")])
    assert first.status_code == 200 and first.json()["accepted"] == 2
    crowd = [pred(f"x{i}", model=f"hostile-{i}") for i in range(50)] + [pred("a2", model="m1")]
    response = post_predictions(client, crowd)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1  # the tracked model still gets in
    assert len(body["rejected"]) == 50 and {r["field"] for r in body["rejected"]} == {"model"}
    assert "limits.max_models = 2" in body["rejected"][0]["error"]
    # another replica (a new app on the same database) counts against the same table
    other = make_client(make_settings(limits={"max_models": 2}))
    assert post_predictions(other, [pred("z", model="m3")]).status_code == 422
    assert post_predictions(other, [pred("b2", model="m2")]).json()["accepted"] == 1
    # feedback may name any model (it is parked), but only tracked ones become label values
    post_feedback(client, [{"model": f"ghost-{i}", "id": "p", "correct": True} for i in range(20)])
    text = client.get("/metrics").text
    labelled = {line.split('model="')[1].split('"')[0] for line in text.splitlines() if 'model="' in line}
    assert labelled <= {"m1", "m2", "other"}
    assert counts(engine)["predictions"] == 4


def test_outage_warnings_are_rate_limited_with_a_count_of_the_rest() -> None:
    from monitor.collector.errors import Throttled

    now = [0.0]
    throttle = Throttled(interval=10.0, clock=lambda: now[0])
    said = []
    for second in range(0, 25):  # one failing request every 0.1 s for 25 s: 250 occurrences
        for tenth in range(10):
            now[0] = second + tenth / 10
            if (suppressed := throttle.allow()) is not None:
                said.append((now[0], suppressed))
    assert said == [(0.0, 0), (10.0, 99), (20.0, 99)]  # three lines, each saying how many it folded in
