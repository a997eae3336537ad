"""GET /v1/models/{model}/advice and calmon_advised_*: what the evaluation advised, per configured
target, equal to the advice computed directly on the same rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.calibration.advice import advise
from monitor.calibration.sketch import CalibrationSketch
from monitor.config import Settings
from tests.support.harness import Clock, build_daemon, sample

START = 1_800_000_000.0


def test_advice_per_target_matches_a_direct_computation_and_is_exported(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        evaluation={"windows": ["1h", "6h"], "bootstrap_draws": 50},
        advice={"targets": [0.9, 0.95], "curve": [0.5, 0.8, 0.95, 0.99]},
        models={"llm": {"segments": {"hard": {"advice_targets": [0.8]}}}},
    )
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(8)
    rows = {}
    services = daemon.app.state.context.services
    for segment, (a, b) in {"easy": (9.0, 1.5), "hard": (3.0, 2.0)}.items():
        p = rng.beta(a, b, 6000)
        y = rng.random(p.size) < p  # served as sent (identity): calibrated
        rows[segment] = (p, y)
        records = [
            {
                "model": "llm",
                "id": f"{segment}{i}",
                "segment": segment,
                "confidence": float(p[i]),
                "ts": START - 3000 + i * 0.5,
            }
            for i in range(p.size)
        ]
        services.ingest_predictions(orjson.dumps({"predictions": records}))
        labels = [{"model": "llm", "id": f"{segment}{i}", "correct": bool(y[i])} for i in range(p.size)]
        services.ingest_feedback(orjson.dumps({"feedback": labels}))
    clock.now += 60
    daemon.scheduler.renew_lease()
    daemon.scheduler.evaluate_once()
    with TestClient(daemon.app) as client:
        easy = client.get("/v1/models/llm/advice", params={"segment": "easy", "window": "1h"}).json()
        assert [a["target"] for a in easy["advice"]] == [0.9, 0.95] and easy["labelled"] == 6000
        p, y = rows["easy"]
        for got in easy["advice"]:
            expected = advise(CalibrationSketch().add(p, y), got["target"])
            assert got["threshold"] == expected.threshold and got["coverage"] == pytest.approx(
                expected.coverage
            )
            assert got["precision_lower"] == pytest.approx(expected.precision_lower)
            assert got["threshold"] is not None and got["precision_lower"] >= got["target"]
        assert "probability >= 1 - alpha" in easy["guarantee"]
        curve = easy["risk_coverage"]  # at the bin edges nearest the configured thresholds, highest first
        assert [pt["threshold"] for pt in curve] == pytest.approx([0.99, 0.95, 0.8, 0.5], abs=1e-3)
        for pt in curve:
            accepted = p > pt["threshold"]
            assert pt["coverage"] == pytest.approx(accepted.mean()) and pt["labelled"] == accepted.sum()
            assert pt["precision"] == pytest.approx(y[accepted].mean())
            assert pt["precision_lower"] <= pt["precision"]
        one = client.get("/v1/models/llm/advice", params={"segment": "hard", "target": 0.8}).json()
        assert [a["target"] for a in one["advice"]] == [0.8]  # the segment's own targets
        refused = client.get("/v1/models/llm/advice", params={"segment": "hard", "target": 0.9})
        assert refused.status_code == 422 and refused.json()["field"] == "target"
        assert "[0.8]" in refused.json()["error"]
        assert client.get("/v1/models/nope/advice").status_code == 404
        assert client.get("/v1/models/llm/advice", params={"segment": "nope"}).json()["field"] == "segment"
        assert client.get("/v1/models/llm/advice", params={"target": 1.5}).status_code == 422
        threshold = easy["advice"][0]["threshold"]
        decided = client.post(
            "/v1/calibrate",
            params={"target": 0.9},
            json={
                "records": [
                    {"model": "llm", "segment": "easy", "confidence": c}
                    for c in (threshold, threshold - 0.01)
                ]
            },
        ).json()["results"]
        assert [r["action"] for r in decided] == ["accept", "review"]  # identity serves c as sent
        # the window with the most labels (a tie here: all 6000 in both, the first configured wins)
        assert {r["advice_window"] for r in decided} == {"1h"} and decided[0]["threshold"] == threshold
        logged = client.post(  # logging with a target: the same decision, and the records are stored
            "/v1/predictions",
            params={"target": 0.9},
            json={
                "predictions": [
                    {"model": "llm", "id": f"t{i}", "segment": "easy", "confidence": c, "ts": START}
                    for i, c in enumerate((threshold, threshold - 0.01))
                ]
            },
        ).json()
        assert logged["accepted"] == 2 and [r["action"] for r in logged["results"]] == ["accept", "review"]
        assert logged["results"][0]["threshold"] == threshold
        plain_log = client.post(
            "/v1/predictions",
            json={"predictions": [{"model": "llm", "id": "t9", "confidence": 0.5, "ts": START}]},
        ).json()
        assert "action" not in plain_log["results"][0]
        other = client.post(
            "/v1/calibrate",
            params={"target": 0.97},
            json={"records": [{"model": "llm", "segment": "easy", "confidence": 0.99}]},
        )
        assert other.json()["results"][0]["action"] == "review"
        assert "not among the advice targets [0.9, 0.95]" in other.json()["results"][0]["advice_reason"]
        unknown = client.post(
            "/v1/calibrate", params={"target": 0.9}, json={"records": [{"model": "new", "confidence": 0.99}]}
        ).json()["results"][0]
        assert unknown["action"] == "review" and "no labelled predictions" in unknown["advice_reason"]
        plain = client.post("/v1/calibrate", json={"records": [{"model": "llm", "confidence": 0.9}]}).json()
        assert plain["results"][0].get("action") is None
        detail = client.get("/v1/models/llm").json()
        windows = [w for w in detail["windows"] if w["score"] == "calibrated" and w["segment"] == "easy"]
        assert all(len(w["advice"]) == 2 for w in windows)
    exposition = daemon.exposition
    labels = {"model": "llm", "segment": "easy", "window": "1h", "target": "0.9"}
    assert sample("calmon_advised_threshold", exposition, **labels) == easy["advice"][0]["threshold"]
    assert sample("calmon_advised_coverage", exposition, **labels) == pytest.approx(
        easy["advice"][0]["coverage"]
    )
    for pt in curve:
        at = {"model": "llm", "segment": "easy", "window": "1h", "threshold": f"{pt['threshold']:.4g}"}
        assert sample("calmon_accept_coverage", exposition, **at) == pytest.approx(pt["coverage"])
        assert sample("calmon_accept_precision", exposition, **at) == pytest.approx(pt["precision"])
