"""Drift policy: what crosses, consecutive evaluations, cooldown, overrides; events and the gauge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.config import Settings, load_settings
from monitor.evaluation.policy import DriftPolicy
from monitor.evaluation.windows import WindowStats, mark_calibrator_changes
from monitor.store.events import append_event
from tests.helpers import post_feedback, post_predictions
from tests.support.harness import Clock, build_daemon, sample


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
    settings = load_settings(
        None, drift={"policy": "ece_interval", "consecutive": 2, "cooldown_seconds": 100, **drift}
    )
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
        "change_point": None,
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
    assert kinds == {("*", "raw_calibration"): False, ("*", "confidence_shift"): True}
    assert active[("qa", "*", "calibration")] is False
    # Spiegelhalter's test is its own policy; the default (evidence) judges no window on calibration.
    _, events = policy(consecutive=1, policy="spiegelhalter").observe([stats(p=1e-6, ci_lower=0.0)], now=0)
    assert [(e.kind, e.actionable) for e in events] == [("calibration_test", True)]
    _, events = policy(consecutive=1, policy="evidence").observe([stats(ci_lower=0.5, p=1e-9)], now=0)
    assert events == []


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
    parts = build_daemon(
        engine,
        make_settings(drift={"policy": "ece_interval", "consecutive": 2, "min_labelled": 500}),
        clock,
        "replica-d",
    )
    scheduler, exposition = parts.scheduler, parts.exposition
    rng = np.random.default_rng(1)
    with TestClient(parts.app) as client:
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
        scheduler.renew_lease()  # as the leader-lease job does every TTL/3
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


def test_drift_targets_prefer_the_drifting_segments_to_the_model_wide_run() -> None:
    from monitor.evaluation.policy import DriftEvent, drift_targets

    def event(model: str, segment: str, kind: str = "calibration") -> DriftEvent:
        return DriftEvent(model, segment, kind, True, 2)

    events = [
        event("a", "*"),
        event("a", "x"),
        event("a", "x", "calibration_test"),
        event("b", "y"),
        event("c", "z", "confidence_shift"),
        event("d", "*", "raw_calibration"),
        event("e", "*"),
        event("e", "v", "confidence_shift"),
        event("f", "*"),
        event("f", "only"),
    ]
    segments = {"a": {"x", "healthy"}, "b": {"y"}, "e": {"v", "w"}, "f": {"only"}}
    # a: one of two segments drifts: that segment, not the model-wide fit that would move its healthy
    # neighbour too; e: model-wide drift with no segment drifting on a calibration kind; f: its only
    # segment drifts, so the model-wide run (the same rows) serves it
    assert drift_targets(events, segments) == [("a", "x"), ("b", "y"), ("e", "*"), ("f", "*")]
    # without knowing the segments, model-wide drift keeps the model-wide run
    assert drift_targets(events) == [("a", "*"), ("b", "y"), ("e", "*"), ("f", "*")]
    # a segment still in drift from an earlier tick explains a model-wide drift raised now: nothing
    # model-wide is queued (the segment's own run happened then); with every segment in drift, it is
    later = [event("g", "*"), event("h", "*")]
    segments = {"g": {"hot", "cold"}, "h": {"hot", "cold"}}
    active = {("g", "hot"), ("h", "hot"), ("h", "cold")}
    assert drift_targets(later, segments, active) == [("h", "*")]


def test_a_window_that_mixes_calibrators_is_not_judged_on_the_calibrated_score() -> None:
    """After a promotion the calibrated window still holds the old calibrator's confidences: judging
    it would re-fire every cooldown (and refit) until it rolled over."""
    judge = policy(consecutive=1)
    mixed = stats(p=1e-6)
    mixed.calibrator_changed = True
    raw = stats(score="raw", ci_lower=0.2, psi=0.5)
    raw.calibrator_changed = True  # raw scores never depend on the calibrator
    active, events = judge.observe([mixed, raw], now=0)
    assert active[("qa", "*", "calibration")] is False
    assert active[("qa", "*", "calibration_test")] is False
    assert {e.kind for e in events} == {"raw_calibration", "confidence_shift"}


def test_which_windows_a_calibrator_change_touches() -> None:
    now = 100_000.0
    series = [
        WindowStats("qa", segment, window, "calibrated", 10, 10, 0, 1.0)
        for segment in ("*", "billing", "search", "other")
        for window in ("1h", "24h")
    ]
    series.append(WindowStats("chat", "*", "24h", "calibrated", 10, 10, 0, 1.0))
    seconds = {"1h": 3600, "24h": 86400}
    # billing got its own calibrator 2 hours ago; the model-wide one changed 10 hours ago
    mark_calibrator_changes(series, seconds, {("qa", "billing"): now - 7200, ("qa", "*"): now - 36000}, now)
    changed = {(s.model, s.segment, s.window) for s in series if s.calibrator_changed}
    assert changed == {
        ("qa", "*", "24h"),  # the model-wide series holds every segment
        ("qa", "other", "24h"),
        ("qa", "billing", "24h"),
        ("qa", "search", "24h"),  # served by the model-wide calibrator
    }
    mark_calibrator_changes(series, seconds, {("qa", "billing"): now - 600}, now)
    changed = {(s.model, s.segment, s.window) for s in series if s.calibrator_changed}
    assert ("qa", "billing", "1h") in changed and ("qa", "*", "1h") in changed
    assert ("qa", "search", "1h") not in changed and ("qa", "search", "24h") not in changed
    assert not any(model == "chat" for model, _, _ in changed)


def test_a_promotion_stops_the_drift_events_until_the_window_rolls_over(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    clock = Clock()
    settings = make_settings(
        drift={"policy": "ece_interval", "consecutive": 1, "min_labelled": 500, "cooldown_seconds": 60},
        evaluation={"windows": ["1h"], "interval_seconds": 60},
    )
    parts = build_daemon(engine, settings, clock, "replica-p")
    scheduler, exposition = parts.scheduler, parts.exposition
    rng = np.random.default_rng(4)
    p = rng.uniform(0.5, 1.0, 2000)
    with TestClient(parts.app) as client:
        records = [{"model": "m", "id": f"m{i}", "confidence": float(v), "ts": clock.now - 30 - i}
                   for i, v in enumerate(p)]  # fmt: skip
        assert post_predictions(client, records).status_code == 200
        truth = rng.random(2000) < p - 0.3
        post_feedback(
            client, [{"model": "m", "id": f"m{i}", "correct": bool(t)} for i, t in enumerate(truth)]
        )
        scheduler.renew_lease()
        scheduler.evaluate_once()

        def calibration_events() -> int:
            found = client.get("/v1/events", params={"kind": "drift_detected"}).json()["events"]
            return sum(e["payload"]["kind"] == "calibration" and e["segment"] == "*" for e in found)

        assert calibration_events() == 1
        with engine.begin() as conn:  # a promotion, as the recalibration job records it
            append_event(conn, "calibrator_promoted", clock.now + 1, {}, "m", "*")
        clock.now += 120  # past the cooldown, the same (old) predictions still in the 1h window
        scheduler.renew_lease()
        scheduler.evaluate_once()
        assert calibration_events() == 1  # not judged again: no second event, no second refit
        labels = {"model": "m", "segment": "*", "window": "1h"}
        assert sample("calmon_window_calibrator_changed", exposition, **labels) == 1.0
        assert sample("calmon_drift_detected", exposition, model="m", segment="*", kind="calibration") == 0.0
        clock.now += 3600  # the window has rolled past the promotion; new traffic only
        scheduler.renew_lease()
        fresh = [{"model": "m", "id": f"n{i}", "confidence": 0.7, "ts": clock.now - 10} for i in range(50)]
        assert post_predictions(client, fresh).status_code == 200
        scheduler.evaluate_once()
        assert sample("calmon_window_calibrator_changed", exposition, **labels) == 0.0


def test_fixed_window_tests_the_tolerance_once_per_disjoint_window() -> None:
    settings = load_settings(None, drift={"policy": "fixed_window", "tolerance": 0.02, "consecutive": 2})
    judge = DriftPolicy(settings.drift_for, {"24h": 86400})
    off = stats(ci_lower=0.03)  # above the tolerance, below the first-wave 0.05 threshold
    hits = []
    for minute in range(0, 3 * 1440, 60):  # hourly evaluations over three days
        _, events = judge.observe([off], now=86400 * 10 + minute * 60)
        hits += [e for e in events if e.kind == "calibration"]
    assert len(hits) == 2  # once per day boundary crossed (not the first evaluation), no consecutive wait
    assert all(e.consecutive == 1 for e in hits)
