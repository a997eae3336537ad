"""Drift policy: what crosses, consecutive evaluations, cooldown, overrides; events and the gauge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.config import Settings, load_settings
from monitor.evaluation.policy import DriftPolicy
from monitor.evaluation.windows import WindowStats
from tests.helpers import post_feedback, post_predictions
from tests.test_scheduler import Clock, build, sample


def stats(
    score: str = "calibrated",
    labelled: int = 2000,
    ci_lower: float = 0.1,
    p: float = 0.5,
    psi: float = 0.0,
    segment: str = "*",
) -> WindowStats:
    return WindowStats(
        "qa",
        segment,
        "24h",
        score,
        labelled,
        labelled,
        0,
        1.0,
        ece=ci_lower + 0.01,
        ece_ci_lower=ci_lower,
        ece_ci_upper=ci_lower + 0.02,
        spiegelhalter_p=p,
        psi=psi,
    )


def policy(**drift: Any) -> DriftPolicy:
    settings = load_settings(None, drift={"consecutive": 2, "cooldown_seconds": 100, **drift})
    return DriftPolicy(settings.drift_for)


def test_consecutive_and_cooldown() -> None:
    judge = policy()
    key = ("qa", "*", "calibration")
    active, events = judge.observe([stats()], now=0)
    assert active[key] is False and events == []  # one crossing is not enough
    active, events = judge.observe([stats()], now=10)
    assert active[key] is True and [e.kind for e in events] == ["calibration"]
    event = events[0]
    assert event.actionable and event.consecutive == 2
    assert event.payload()["crossings"][0] == {
        "model": "qa",
        "segment": "*",
        "kind": "calibration",
        "window": "24h",
        "value": 0.1,
        "threshold": 0.05,
        "labelled": 2000,
        "predictions": 2000,
    }
    assert judge.observe([stats()], now=50)[1] == []  # still active, in cooldown: no new event
    assert judge.observe([stats()], now=111)[1][0].kind == "calibration"  # cooldown over
    active, _ = judge.observe([stats(ci_lower=0.01)], now=120)
    assert active[key] is False
    active, events = judge.observe([stats()], now=130)
    assert active[key] is False and events == []  # the count restarted


def test_what_counts_as_drift() -> None:
    judge = policy(consecutive=1)
    active, events = judge.observe(
        [
            stats(labelled=100),  # too few labels: not judged on ECE
            stats(score="raw", ci_lower=0.2, psi=0.5),  # raw: reported, and the label-free shift
            stats(p=1e-6, ci_lower=0.0, segment="billing"),  # Spiegelhalter only
        ],
        now=0,
    )
    kinds = {(e.segment, e.kind): e.actionable for e in events}
    assert kinds == {
        ("*", "raw_calibration"): False,
        ("*", "confidence_shift"): True,
        ("billing", "calibration_test"): True,
    }
    assert active[("qa", "*", "calibration")] is False


def test_model_and_segment_overrides() -> None:
    settings = load_settings(
        None,
        drift={"ece_threshold": 0.05},
        models={
            "qa": {"drift": {"ece_threshold": 0.08}, "segments": {"billing": {"drift": {"min_labelled": 50}}}}
        },
    )
    assert settings.drift_for("qa", "*").ece_threshold == 0.08
    billing = settings.drift_for("qa", "billing")
    assert (billing.ece_threshold, billing.min_labelled) == (0.08, 50)
    assert settings.drift_for("other", "*").ece_threshold == 0.05


def test_overconfident_model_raises_drift_events_and_gauge(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    clock = Clock()
    parts = build(engine, make_settings(drift={"consecutive": 2, "min_labelled": 500}), clock, "replica-d")
    scheduler, exposition = parts["scheduler"], parts["exposition"]
    rng = np.random.default_rng(1)
    with TestClient(parts["app"]) as client:
        for model, bias in (("overconfident", 0.3), ("honest", 0.0)):
            p = rng.uniform(0.5, 1.0, 2000)
            records = [
                {"model": model, "id": f"{model}{i}", "confidence": float(v), "ts": clock.now - 30 - i}
                for i, v in enumerate(p)
            ]
            assert post_predictions(client, records).status_code == 200
            truth = rng.random(2000) < p - bias
            post_feedback(
                client,
                [{"model": model, "id": f"{model}{i}", "correct": bool(t)} for i, t in enumerate(truth)],
            )
        scheduler.renew_lease()
        scheduler.evaluate_once()
        assert client.get("/v1/events", params={"kind": "drift_detected"}).json()["events"] == []
        clock.now += 60
        scheduler.evaluate_once()  # second consecutive crossing
        events = client.get("/v1/events", params={"kind": "drift_detected"}).json()["events"]
        assert client.get("/v1/events", params={"limit": 0}).status_code == 422
    flagged = {(e["model"], e["segment"], e["payload"]["kind"]) for e in events}
    assert ("overconfident", "*", "calibration") in flagged
    assert ("overconfident", "*", "raw_calibration") in flagged  # identity: raw == calibrated
    assert not any(model == "honest" for model, _, _ in flagged)
    crossing = next(e for e in events if e["payload"]["kind"] == "calibration")["payload"]["crossings"][0]
    assert crossing["value"] > crossing["threshold"] == 0.05 and crossing["labelled"] == 2000
    labels = {"segment": "*", "kind": "calibration"}
    assert sample("calmon_drift_detected", exposition, model="overconfident", **labels) == 1.0
    assert sample("calmon_drift_detected", exposition, model="honest", **labels) == 0.0


def test_drift_targets_prefer_the_model_wide_run() -> None:
    from monitor.evaluation.policy import DriftEvent
    from monitor.scheduler import drift_targets

    def event(model: str, segment: str, kind: str = "calibration") -> DriftEvent:
        return DriftEvent(model, segment, kind, True, 2)

    events = [
        event("a", "*"),
        event("a", "x"),
        event("a", "x", "calibration_test"),
        event("b", "y"),
        event("c", "z", "confidence_shift"),
        event("d", "*", "raw_calibration"),
    ]
    assert drift_targets(events) == [("a", "*"), ("b", "y")]
