"""The drift detectors in the daemon: every folded label bet on exactly once, the state continued by a
new leader, the alarm with its change point, the refit after it (or the wait), the automatic
rollback of a calibrator that serves worse than raw, and the fixed reference of confidence shift."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from sqlalchemy import Engine, func, select

from monitor.app import Daemon
from monitor.calibration.calibrators import PlattScaling
from monitor.config import Settings
from monitor.store import calibrators as registry
from monitor.store.aggregates import rebuild
from monitor.store.events import list_events
from monitor.store.schema import evidence, evidence_pending
from tests.support.harness import Clock, build_daemon, sample

START = 1_800_000_000.0


def send(daemon: Daemon, model: str, p: np.ndarray, correct: np.ndarray, ts: np.ndarray, tag: str) -> None:
    """Predictions, then their labels, through the services the API calls."""
    services = daemon.app.state.context.services
    for start in range(0, p.size, 5000):
        part = range(start, min(p.size, start + 5000))
        predictions = [{"model": model, "id": f"{tag}{i}", "confidence": float(p[i]), "ts": float(ts[i])}
                       for i in part]  # fmt: skip
        services.ingest_predictions(orjson.dumps({"predictions": predictions}))
        feedback = [{"model": model, "id": f"{tag}{i}", "correct": bool(correct[i])} for i in part]
        services.ingest_feedback(orjson.dumps({"feedback": feedback}))


def traffic(rng: np.random.Generator, n: int, bias: float) -> tuple[np.ndarray, np.ndarray]:
    p = 0.5 + 0.5 * rng.beta(3.0, 1.0, n)
    return p, rng.random(n) < np.clip(p - bias, 0, 1)


def tick(daemon: Daemon, clock: Clock, seconds: float = 60.0) -> Any:
    clock.now += seconds
    daemon.scheduler.renew_lease()
    return daemon.scheduler.evaluate_once()


def verdict(snapshot: Any, model: str, score: str = "calibrated", segment: str = "*") -> dict[str, Any]:
    (found,) = [
        e for e in snapshot.evidence if (e["model"], e["segment"], e["score"]) == (model, segment, score)
    ]
    return found


def events(engine: Engine, kind: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return list_events(conn, kind=kind, limit=1000)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        evaluation={"windows": ["1h"], "interval_seconds": 60, "bucket_seconds": 60, "bootstrap_draws": 50},
        recalibration={"min_rows": 1000, "methods": ["platt", "isotonic"]},
    )


def test_every_label_is_bet_on_once_and_a_new_leader_continues(engine: Engine, settings: Settings) -> None:
    clock = Clock(START)
    first = build_daemon(engine, settings, clock, "replica-a")
    rng = np.random.default_rng(0)
    for k in range(3):
        p, y = traffic(rng, 400, 0.0)
        send(first, "m", p, y, np.full(p.size, clock.now - 30), f"a{k}-")
        snapshot = tick(first, clock)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(evidence_pending)).scalar() == 0  # consumed
        stored = conn.execute(select(evidence.c.labels).where(evidence.c.segment == "*")).scalars().all()
    assert sorted(stored) == [1200, 1200, 1200]  # raw, calibrated, paired: each label once
    assert verdict(snapshot, "m")["labels"] == 1200 and not verdict(snapshot, "m")["alarm"]

    # A rebuild re-folds every row but bets on nothing again.
    with engine.begin() as conn:
        rebuild(conn, settings.evaluation.bucket_seconds, settings.evaluation.fine_bins)
        assert conn.execute(select(func.count()).select_from(evidence_pending)).scalar() == 0

    # A lost lease writes nothing: the next leader bets on the same labels, from the stored state.
    p, y = traffic(rng, 400, 0.0)
    send(first, "m", p, y, np.full(p.size, clock.now - 30), "b-")
    first.scheduler.tick.may_write = lambda: False
    with pytest.raises(RuntimeError, match="lease"):
        tick(first, clock)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(evidence_pending)).scalar() > 0
    second = build_daemon(engine, settings, clock, "replica-b")
    clock.now += settings.scheduler.lease_ttl_seconds + 1  # the first replica's lease has lapsed
    second.scheduler.renew_lease()
    after = second.scheduler.evaluate_once()
    assert verdict(after, "m")["labels"] == 1600
    before = verdict(snapshot, "m")["log10_evidence"]
    assert verdict(after, "m")["log10_evidence"] != before  # continued and stepped, not restarted


def test_drift_alarms_with_its_change_point_and_the_refit_uses_only_what_came_after(
    engine: Engine, settings: Settings
) -> None:
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(1)
    for k in range(10):  # 10 calibrated minutes
        p, y = traffic(rng, 300, 0.0)
        send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), f"c{k}-")
        snapshot = tick(daemon, clock)
    assert not verdict(snapshot, "m")["alarm"] and daemon.queue.waiting() == []
    change = clock.now
    for k in range(15):  # then 10 points overconfident
        p, y = traffic(rng, 300, 0.10)
        send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), f"d{k}-")
        snapshot = tick(daemon, clock)
        if verdict(snapshot, "m")["alarm"]:
            break
    found = verdict(snapshot, "m")
    assert found["alarm"] and abs(found["change_point"] - change) <= 120, (found, change)
    assert k <= 6  # at most ~2,000 labels after the shift
    (event,) = [e for e in events(engine, "drift_detected") if e["payload"]["kind"] == "calibration"
                and e["segment"] == "*"]  # fmt: skip
    assert event["payload"]["change_point"] == pytest.approx(found["change_point"])
    labels = {"model": "m", "segment": "*", "score": "calibrated"}
    assert sample("calmon_drift_alarm", daemon.exposition, **labels) == 1.0
    assert sample(
        "calmon_drift_change_point_timestamp_seconds", daemon.exposition, **labels
    ) == pytest.approx(found["change_point"])
    detail = daemon.app.state.context.services.model_detail("m")
    assert any(e["score"] == "calibrated" and e["alarm"] for e in detail["evidence"])

    outcomes = daemon.queue.drain()  # few labels since the change point yet: waits, then fits
    for k in range(10):
        if outcomes[-1].outcome != "waiting":
            break
        p, y = traffic(rng, 300, 0.10)
        send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), f"e{k}-")
        tick(daemon, clock)
        outcomes += daemon.queue.drain()
    *waited, outcome = outcomes
    assert {o.outcome for o in waited} <= {"waiting"} and outcome.outcome == "promoted", outcome.reason
    assert outcome.report["data"]["since"] == pytest.approx(found["change_point"])
    assert outcome.report["data"]["fit_start"] >= found["change_point"]
    after = tick(daemon, clock)  # the promotion restarts the evidence at its epoch
    restarted = verdict(after, "m")
    assert not restarted["alarm"] and restarted["epoch"] > change and restarted["labels"] == 0
    assert verdict(after, "m", "raw")["alarm"]  # raw is still off: reported, not acted on


def test_a_drift_with_too_few_labels_since_it_began_waits_then_refits(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        evaluation={"windows": ["1h"], "interval_seconds": 60, "bucket_seconds": 60, "bootstrap_draws": 50},
        recalibration={"min_rows": 3000, "methods": ["platt"]},
    )
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(2)
    for k in range(4):
        p, y = traffic(rng, 2000, 0.0)
        send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), f"c{k}-")
        tick(daemon, clock)
    p, y = traffic(rng, 2000, 0.25)  # a big shift: evidence at once, but only 2000 labels since
    send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), "d0-")
    tick(daemon, clock)
    outcomes = daemon.queue.drain()
    assert [o.outcome for o in outcomes] == ["waiting"]
    assert len(events(engine, "recalibration_waiting")) == 1
    assert daemon.queue.waiting() == [] and daemon.queue.retry_parked() == 1  # asked again next time
    assert [o.outcome for o in daemon.queue.drain()] == ["waiting"]
    assert len(events(engine, "recalibration_waiting")) == 1  # said once per change point
    p, y = traffic(rng, 2000, 0.25)
    send(daemon, "m", p, y, clock.now + rng.uniform(0, 60, p.size), "d1-")
    tick(daemon, clock)  # the tick re-queues the parked run
    (outcome,) = daemon.queue.drain()
    assert outcome.outcome == "promoted", outcome.reason
    assert outcome.report["data"]["fit_rows"] + outcome.report["data"]["validation_rows"] <= 4000


def test_a_calibrator_that_serves_worse_than_raw_is_rolled_back(engine: Engine, settings: Settings) -> None:
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(3)
    notified: list[tuple[Any, ...]] = []
    daemon.scheduler.tick.notify = lambda *args: notified.append(args)
    p, y = traffic(rng, 3000, 0.0)
    send(daemon, "m", p, y, clock.now - rng.uniform(0, 60, p.size), "c-")
    tick(daemon, clock)
    # A calibrator fitted on other traffic that pushes every confidence up (by ~0.1 around 0.75):
    # the raw score is calibrated, the served one is not.
    bad = PlattScaling(a=1.0, b=0.7)
    with engine.begin() as conn:
        record = registry.create(conn, "m", "*", bad, clock.now, status="candidate", reason="test: a bad fit")
        registry.activate(conn, record.id, clock.now, "test", {})
    daemon.scorer.refresh(engine, clock.now)
    for k in range(20):
        p, y = traffic(rng, 500, 0.0)
        send(daemon, "m", p, y, clock.now + rng.uniform(1, 60, p.size), f"s{k}-")
        tick(daemon, clock)
        if events(engine, "calibrator_rolled_back"):
            break
    (rolled,) = events(engine, "calibrator_rolled_back")
    assert "worse than raw" in rolled["payload"]["reason"]
    assert (
        rolled["payload"]["evidence"]["paired"]["alarm"]
        and rolled["payload"]["evidence"]["calibrated"]["alarm"]
    )
    assert [n[0] for n in notified if n[0] == "calibrator_rolled_back"] == ["calibrator_rolled_back"]
    with engine.connect() as conn:
        assert registry.active(conn, "m", "*") is None  # identity serves again
    # The drift alarm had queued a refit before the paired evidence crossed; against the identity
    # that serves now, on a calibrated raw score, there is nothing at the tolerance scale to gain.
    assert all(o.outcome != "promoted" for o in daemon.queue.drain())


def test_confidence_shift_against_a_fixed_reference_fires_once_for_a_one_off_anomaly(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        evaluation={"windows": ["1h"], "interval_seconds": 600, "bucket_seconds": 600, "bootstrap_draws": 50},
        drift={"min_labelled": 200, "consecutive": 1, "cooldown_seconds": 0},
    )
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(4)

    def hour(confidence: np.ndarray, tag: str) -> None:
        """Six 10-minute evaluations of unlabelled traffic."""
        services = daemon.app.state.context.services
        for k in range(6):
            part = confidence[k * 300 : (k + 1) * 300]
            records = [{"model": "m", "id": f"{tag}{k}-{i}", "confidence": float(v), "ts": clock.now + i}
                       for i, v in enumerate(part)]  # fmt: skip
            services.ingest_predictions(orjson.dumps({"predictions": records}))
            tick(daemon, clock, 600)

    normal = lambda: 0.5 + 0.5 * rng.beta(3.0, 1.0, 1800)  # noqa: E731
    hour(normal(), "a")  # the first full hour becomes the reference
    hour(normal(), "b")
    assert not any(e["payload"]["kind"] == "confidence_shift" for e in events(engine, "drift_detected"))
    hour(0.5 + 0.5 * rng.beta(1.0, 1.0, 1800), "x")  # an hour of different traffic

    def shifts_of() -> list[dict[str, Any]]:
        found = events(engine, "drift_detected")
        return [e for e in found if e["payload"]["kind"] == "confidence_shift" and e["segment"] == "*"]

    shifts = shifts_of()
    assert shifts
    count = len(shifts)
    hour(normal(), "c")  # back to normal: compared with the fixed reference, not with the anomaly
    hour(normal(), "d")
    later = shifts_of()
    # the anomaly leaves the 1h window within the first evaluations of the next hour, then silence
    assert len(later) - count <= 5
    assert not any(e["ts"] > clock.now - 3000 for e in later)
