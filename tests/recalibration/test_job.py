"""Recalibration on real miscalibrated predictions: promote, refuse with reasons, fall back, report,
and the drift-triggered loop (drift -> recalibration -> calibrated ECE below threshold for new data)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB
from sqlalchemy import Engine

from monitor.calibration.metrics import expected_calibration_error
from monitor.collector.api import create_app
from monitor.collector.serving import RegistryScorer
from monitor.config import Settings
from monitor.recalibration.job import Outcome, UnknownSeries, load_report, recalibrate
from monitor.recalibration.service import Recalibrator
from monitor.store import calibrators as store
from monitor.store.events import list_events
from monitor.telemetry import ServiceMetrics
from tests.helpers import counts
from tests.support.harness import Clock, build_daemon, sample

NOW = 1_800_000_000.0


def digits_stream(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness of an overconfident GaussianNB on scikit-learn's digits."""
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, train_size=0.2, random_state=seed, stratify=y)
    proba = GaussianNB().fit(X_train, y_train).predict_proba(X_rest)
    return proba.max(1), (proba.argmax(1) == y_rest)


def overconfident_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One model throughout: true probability q, reported sigmoid(2.5 logit q) (overconfident).

    Large on purpose: with n ~ 500 the 15-bin ECE of a *perfect* model is itself ~0.05 (see
    docs/architecture.md), so "below the 0.05 threshold" needs thousands of new predictions.
    """
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.3, 0.97, n)
    reported = 1.0 / (1.0 + np.exp(-2.5 * np.log(q / (1 - q))))
    return reported, rng.random(n) < q


def ingest(
    client: TestClient,
    p: np.ndarray,
    correct: np.ndarray,
    start: int,
    model: str = "nb",
    segment: str = "default",
    t0: float = NOW - 3000,
) -> list[dict[str, Any]]:
    records = [
        {
            "model": model,
            "id": f"{model}-{start + i}",
            "segment": segment,
            "confidence": float(v),
            "ts": t0 + i,
        }
        for i, v in enumerate(p)
    ]
    response = client.post("/v1/predictions", json={"predictions": records})
    assert response.status_code == 200, response.text
    feedback = [
        {"model": model, "id": f"{model}-{start + i}", "correct": bool(c)} for i, c in enumerate(correct)
    ]
    assert client.post("/v1/feedback", json={"feedback": feedback}).json()["matched"] == len(p)
    return list(response.json()["results"])


@pytest.fixture
def labelled(engine: Engine, make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings()
    p, correct = digits_stream()
    with TestClient(create_app(settings, engine, clock=lambda: NOW)) as client:
        ingest(client, p, correct, 0)
    return settings


def test_manual_recalibration_promotes_and_reports(engine: Engine, labelled: Settings) -> None:
    # GaussianNB on digits is right 81% of the time: targets it can reach on 575 validation rows
    labelled = labelled.model_copy(
        update={"advice": labelled.advice.model_copy(update={"targets": [0.8, 0.9]})}
    )
    outcome = recalibrate(engine, labelled, "nb", now=NOW)
    assert outcome.outcome == "promoted", outcome.reason
    with engine.connect() as conn:
        active = store.active(conn, "nb", "*")
        kinds = [e["kind"] for e in list_events(conn, model="nb")]
    assert active is not None and active.id == outcome.calibrator_id and active.version == 1
    assert kinds == ["calibrator_promoted", "recalibration_started"]
    assert outcome.calibrator_id is not None
    found = load_report(engine, outcome.calibrator_id)
    assert found is not None
    report, md = found
    assert report["outcome"] == "promoted" and report["data"]["validation_rows"] > 500
    assert {c["method"] for c in report["candidates"]} == {
        "temperature",
        "platt",
        "isotonic",
        "histogram",
        "beta",
    }
    assert [c["name"] for c in report["gate"]["checks"]] == [
        "ece_improves",
        "ece_improvement_ci",
        "brier_not_worse",
        "auroc_kept",
    ]
    before = sum(r["count"] for r in report["reliability_before"])
    assert before == sum(r["count"] for r in report["reliability_after"]) == report["data"]["validation_rows"]
    assert "**Decision:** promoted" in md and "PASS **ece_improves**" in md and "| isotonic |" in md
    advice = report["advice"]
    assert [row["target"] for row in advice["targets"]] == labelled.advice_targets_for("nb", "*")
    assert advice["rows"] == report["data"]["validation_rows"]
    moved = [r for r in advice["targets"] if r["before"]["threshold"] != r["after"]["threshold"]]
    assert moved, advice  # an overconfident model's thresholds move once it is calibrated
    for row in advice["targets"]:
        for side in ("before", "after"):
            if row[side]["threshold"] is not None:
                assert row[side]["precision_lower"] >= row["target"]
    assert "## Accept/review thresholds" in md and "the threshold moves from" in md


def test_report_advice_is_the_advice_on_each_calibrators_validation_scores() -> None:
    """Checked against a direct count: precision and coverage above each advised threshold."""
    from sklearn.isotonic import IsotonicRegression

    from monitor.recalibration.report import threshold_advice, threshold_moves

    p, correct = digits_stream()
    fit, val = slice(0, 700), slice(700, None)
    after = (
        IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p[fit], correct[fit]).predict(p[val])
    )
    found = threshold_advice(p[val], after, correct[val], (0.8, 0.9), 0.05)
    assert found["rows"] == correct[val].size
    for row in found["targets"]:
        for side, scores in (("before", p[val]), ("after", after)):
            advice = row[side]
            if advice["threshold"] is None:
                continue
            accepted = scores > advice["threshold"]
            assert advice["coverage"] == pytest.approx(accepted.mean())
            assert advice["precision"] == pytest.approx(correct[val][accepted].mean())
            assert advice["labelled"] == accepted.sum()
    assert found["targets"][0]["before"]["threshold"] != found["targets"][0]["after"]["threshold"]
    lines = threshold_moves({"outcome": "rejected", "advice": found})
    assert len(lines) == 2 and all(
        ("would have moved" in s) or ("stays" in s) or ("no threshold" in s) for s in lines
    )
    assert "would have moved" in lines[0]


def test_a_worse_candidate_is_refused_with_reasons_and_the_active_stays(
    engine: Engine, labelled: Settings
) -> None:
    first = recalibrate(engine, labelled, "nb", now=NOW)
    assert first.outcome == "promoted"
    again = recalibrate(engine, labelled, "nb", trigger="manual", now=NOW + 1)  # same data: nothing to gain
    assert again.outcome == "rejected"
    assert "reject: failed ece_improves" in again.reason
    with engine.connect() as conn:
        assert store.active(conn, "nb", "*").id == first.calibrator_id  # type: ignore[union-attr]
        refused = store.get(conn, again.calibrator_id)  # type: ignore[arg-type]
        event = list_events(conn, kind="calibrator_rejected")[0]
    assert refused is not None and refused.status == "rejected" and refused.version == 2
    failing = [c for c in event["payload"]["checks"] if not c["passed"]]
    assert failing[0]["name"] == "ece_improves" and "margin" in failing[0]["detail"]


def test_sparse_segment_falls_back_to_model_wide_and_dry_run_writes_nothing(
    engine: Engine, labelled: Settings
) -> None:
    with TestClient(create_app(labelled, engine, clock=lambda: NOW)) as client:
        ingest(client, np.full(30, 0.9), np.ones(30, bool), 100_000, segment="rare")  # too few to fit alone
    dry = recalibrate(engine, labelled, "nb", segment="rare", dry_run=True, now=NOW)
    assert dry.outcome == "dry_run" and dry.segment == "*" and dry.report["fallback_from_segment"] == "rare"
    with engine.connect() as conn:
        assert store.list_all(conn) == [] and list_events(conn) == []


def test_after_a_change_point_a_big_segment_waits_for_its_own_rows_and_a_small_one_falls_back(
    engine: Engine, labelled: Settings
) -> None:
    change = NOW - 500.0
    p, correct = overconfident_stream(1300, seed=4)
    with TestClient(create_app(labelled, engine, clock=lambda: NOW)) as client:
        ingest(
            client, p[:1200], correct[:1200], 200_000, segment="busy", t0=change - 1300
        )  # before the change
        ingest(client, p[1200:], correct[1200:], 300_000, segment="busy", t0=change + 1)  # 100 after it
        ingest(client, p[:30], correct[:30], 400_000, segment="rare", t0=change + 200)  # small, all after
    busy = recalibrate(engine, labelled, "nb", segment="busy", trigger="drift", since=change, now=NOW)
    assert busy.outcome == "waiting" and busy.segment == "busy"
    assert "waiting for them rather than fitting the model-wide calibrator" in busy.reason
    # "nb" model-wide has the digits rows (ts up to NOW - 1600) before the change, so too few after it
    # for any model-wide fit; a small segment's fallback is judged on the model-wide rows since then
    rare = recalibrate(
        engine, labelled, "nb", segment="rare", trigger="drift", since=change, dry_run=True, now=NOW
    )
    assert rare.outcome == "waiting" and rare.segment == "rare"
    assert "waiting rather than mixing regimes" in rare.reason  # the model-wide rows' verdict: it fell back
    with engine.connect() as conn:
        waiting = list_events(conn, kind="recalibration_waiting")
        assert [e["segment"] for e in waiting] == ["busy"] and store.list_all(conn) == []


def test_too_few_labels_is_a_failed_outcome_but_an_unknown_series_writes_nothing(
    engine: Engine, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings, engine, clock=lambda: NOW)) as client:
        ingest(client, np.full(50, 0.8), np.ones(50, bool), 0, model="young")
    with caplog.at_level(logging.INFO, logger="calmon.recalibration"):
        failed = recalibrate(engine, settings, "young", now=NOW)
    assert failed.outcome == "failed" and "fewer than recalibration.min_rows" in failed.reason
    # an expected outcome of a young series: one INFO line, no ERROR and no traceback
    records = [r for r in caplog.records if r.name == "calmon.recalibration"]
    assert [r.levelno for r in records] == [logging.INFO] and records[0].exc_info is None
    with engine.connect() as conn:
        assert list_events(conn, kind="recalibration_failed")[0]["model"] == "young"
    for model, segment in (("unknown-model", "*"), ("young", "no-such-segment")):
        with pytest.raises(UnknownSeries, match="no predictions stored"):
            recalibrate(engine, settings, model, segment, now=NOW)
    with engine.connect() as conn:
        assert len(list_events(conn)) == 1  # only young's expected failure: a typo leaves no trace


def test_recalibrate_route_and_report_route(engine: Engine, labelled: Settings) -> None:
    runs: list[tuple[Any, ...]] = []
    notified: list[tuple[Any, ...]] = []
    recalibrator = Recalibrator(engine, labelled, ServiceMetrics(CollectorRegistry()),
                                notify=lambda *event: notified.append(event), clock=lambda: NOW)  # fmt: skip

    class Recording:
        def run(
            self, model: str, segment: str = "*", trigger: str = "manual", dry_run: bool = False
        ) -> Outcome:
            runs.append((model, segment, trigger, dry_run))
            return recalibrator.run(model, segment, trigger, dry_run)

    app = create_app(labelled, engine, clock=lambda: NOW, recalibrator=Recording())
    with TestClient(app) as client:
        body = client.post("/v1/models/nb/recalibrate", params={"dry_run": "true"}).json()
        assert body["outcome"] == "dry_run" and counts(engine)["predictions"] > 0
        body = client.post("/v1/models/nb/recalibrate").json()
        assert body["outcome"] == "promoted"
        report = client.get(f"/v1/calibrators/{body['calibrator_id']}/report").json()
        assert report["calibrator_id"] == body["calibrator_id"] and report["version"] == "1"
        (kind, _, _, payload) = notified[-1]  # the notification points at the decision report page
        assert kind == "calibrator_promoted" and payload["report"] == f"/reports/{body['calibrator_id']}"
        md = client.get(f"/v1/calibrators/{body['calibrator_id']}/report", params={"format": "markdown"})
        assert md.headers["content-type"].startswith("text/markdown") and md.text.startswith(
            "# Recalibration"
        )
        assert client.get("/v1/calibrators/999/report").status_code == 404
        picture = client.get(f"/v1/calibrators/{body['calibrator_id']}/report", params={"format": "svg"})
        assert picture.headers["content-type"] == "image/svg+xml"
        assert picture.text.startswith("<svg") and 'id="report-reliability-after-bins"' in picture.text
        after = picture.text.split('id="report-reliability-after-bins"', 1)[1].split("</g>", 1)[0]
        assert after.count("<use ") >= 4  # one marker per labelled validation bin
        missing = client.post("/v1/models/empty/recalibrate")
        assert missing.status_code == 404 and missing.json()["field"] == "model"
        typo = client.post("/v1/models/nb/recalibrate", params={"segment": "defualt"})
        assert typo.status_code == 404 and typo.json()["field"] == "segment"
        assert (
            client.post("/v1/models/nb/recalibrate", headers={"content-type": "text/plain"}).status_code
            == 415
        )
    assert runs[0] == ("nb", "*", "manual", True)


def test_drift_triggers_recalibration_and_new_predictions_are_calibrated(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    clock = Clock(NOW)
    settings = make_settings(recalibration={"min_rows": 1000})
    daemon = build_daemon(engine, settings, clock, "replica-loop")
    scheduler, exposition = daemon.scheduler, daemon.exposition
    p_old, c_old = overconfident_stream(3000, seed=0)
    p_new, c_new = overconfident_stream(3000, seed=1)
    with TestClient(daemon.app) as client:
        ingest(client, p_old, c_old, 0)  # the overconfident model, labels arriving
        scheduler.renew_lease()
        scheduler.evaluate_once()  # 3000 labels this far off are evidence enough at once
        assert daemon.queue.waiting() == [("nb", "*")]  # queued by the tick, not run inside it
        event = client.get("/v1/events", params={"kind": "drift_detected"}).json()["events"][0]
        since = event["payload"]["change_point"]
        assert NOW - 3000 <= since <= NOW  # within the traffic that carried the evidence
        outcomes = daemon.queue.drain()  # the recalibrate-queued job
        assert [(o.outcome, o.segment) for o in outcomes] == [("promoted", "*")]  # exactly one run
        assert outcomes[0].report["data"]["fit_start"] >= since  # fitted after the change point only
        clock.now += 60
        scheduler.renew_lease()
        scheduler.evaluate_once()
        assert daemon.queue.waiting() == []  # the drift episode is in cooldown: no second run
        results = ingest(client, p_new, c_new, 10_000, t0=clock.now - 3500)
    calibrated = np.array([r["calibrated_confidence"] for r in results])
    assert {r["calibrator_version"] for r in results} == {"1"}
    raw_ece = expected_calibration_error(p_new, c_new)
    new_ece = expected_calibration_error(calibrated, c_new)
    assert raw_ece > 0.1 and new_ece < settings.drift.ece_threshold, (raw_ece, new_ece)
    with engine.connect() as conn:
        kinds = [e["kind"] for e in list_events(conn, model="nb")]
    assert "drift_detected" in kinds and "calibrator_promoted" in kinds
    # after the promotion the windows mix two calibrators: flagged, and their calibrated score unjudged
    assert sample("calmon_drift_detected", exposition, model="nb", segment="*", kind="calibration") == 0.0
    assert sample("calmon_window_calibrator_changed", exposition, model="nb", segment="*", window="1h") == 1.0
    assert sample("calmon_drift_detected", exposition, model="nb", segment="*", kind="raw_calibration") == 1.0


def test_temperature_is_fitted_on_stored_logits_and_served_on_them(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    """Multi-class logits that are 2.5x too sharp, with label feedback naming the true class."""
    from scipy.special import softmax

    from monitor.calibration.calibrators import TemperatureScaling

    settings = make_settings(recalibration={"methods": ["temperature", "platt"], "min_rows": 1000})
    rng = np.random.default_rng(3)
    n, classes = 4000, 5
    logits = rng.normal(0, 3, size=(n, classes))
    truth = np.array([rng.choice(classes, p=row) for row in softmax(logits / 2.5, axis=1)])
    scorer = RegistryScorer()
    with TestClient(create_app(settings, engine, scorer=scorer, clock=lambda: NOW)) as client:
        records = [
            {"model": "mc", "id": f"m{i}", "logits": z.tolist(), "ts": NOW - 4000 + i}
            for i, z in enumerate(logits)
        ]
        assert client.post("/v1/predictions", json={"predictions": records}).status_code == 200
        feedback = [{"model": "mc", "id": f"m{i}", "label": str(t)} for i, t in enumerate(truth)]
        assert client.post("/v1/feedback", json={"feedback": feedback}).json()["matched"] == n
        outcome = recalibrate(engine, settings, "mc", now=NOW)
        temperature = next(c for c in outcome.report["candidates"] if c["method"] == "temperature")
        assert temperature["params"]["mode"] == "logits"
        assert temperature["params"]["temperature"] == pytest.approx(2.5, rel=0.1)
        assert outcome.outcome == "promoted" and outcome.report["chosen"] == "temperature", outcome.reason
        scorer.refresh(engine, NOW)
        z = rng.normal(0, 3, size=classes)
        served = client.post(
            "/v1/calibrate",
            json={
                "records": [
                    {"model": "mc", "logits": z.tolist()},
                    {"model": "mc", "probs": softmax(z).tolist()},
                    {"model": "mc", "confidence": 0.9},
                ]
            },
        ).json()["results"]
    fitted = TemperatureScaling.from_params(temperature["params"])
    expected = fitted.transform_logits(z[None, :])[0]
    assert served[0]["calibrated_confidence"] == pytest.approx(expected, rel=1e-5)  # on the logits
    assert served[1]["calibrated_confidence"] == pytest.approx(expected, rel=1e-4)  # probs -> log-probs
    assert served[2]["calibrated_confidence"] == pytest.approx(
        float(fitted.transform([0.9])[0])
    )  # scalar form
