"""The scheduler: leader lease, evaluation into the snapshot and exporter, failing and slow jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.app import Daemon
from monitor.config import Settings
from monitor.evaluation.tick import SNAPSHOT, LeaseLost
from monitor.recalibration.service import RecalibrationQueue
from monitor.store.coordination import load_snapshot
from monitor.store.events import list_events
from tests.conftest import MakeSettings
from tests.helpers import post_feedback, post_predictions
from tests.support.harness import Clock, build_daemon, sample


@dataclass
class Parts:
    daemon: Daemon
    clock: Clock
    client: TestClient


@pytest.fixture
def parts(engine: Engine, make_settings: MakeSettings) -> Iterator[Parts]:
    clock = Clock()
    daemon = build_daemon(engine, make_settings(), clock, "replica-a")
    with TestClient(daemon.app) as client:
        yield Parts(daemon, clock, client)


def test_evaluation_publishes_snapshot_metrics_and_api(parts: Parts) -> None:
    client, clock, scheduler = parts.client, parts.clock, parts.daemon.scheduler
    rng = np.random.default_rng(3)
    p = rng.uniform(0.5, 1.0, 400)
    records = [
        {"model": "qa", "id": f"p{i}", "confidence": float(v), "ts": clock.now - 60 - i}
        for i, v in enumerate(p)
    ]
    assert post_predictions(client, records).status_code == 200
    truth = rng.random(400) < p - 0.2
    assert (
        post_feedback(
            client, [{"model": "qa", "id": f"p{i}", "correct": bool(t)} for i, t in enumerate(truth)]
        ).json()["matched"]
        == 400
    )
    scheduler.renew_lease()
    assert scheduler.is_leader
    snapshot = scheduler.evaluate_once()
    registry = parts.daemon.exposition
    ece = sample(
        "calmon_expected_calibration_error", registry, model="qa", segment="*", window="1h", score="raw"
    )
    assert ece == pytest.approx(snapshot.find("qa", "*", "1h", "raw").ece) and ece > 0.1
    assert (
        sample(
            "calmon_labelled_predictions", registry, model="qa", segment="default", window="24h", score="raw"
        )
        == 400
    )
    assert (
        sample(
            "calmon_label_coverage_ratio", registry, model="qa", segment="*", window="7d", score="calibrated"
        )
        == 1.0
    )
    assert (
        sample(
            "calmon_calibrator_info", registry, model="qa", segment="*", version="identity", method="identity"
        )
        == 1
    )
    assert (
        sample(
            "calmon_binned_predictions_total", registry, model="qa", segment="default", score="raw", bin="14"
        )
        > 0
    )
    assert sample("calmon_predictions_total", registry, model="qa") == 400
    assert sample("calmon_feedback_total", registry, model="qa", outcome="matched") == 400
    assert sample("calmon_last_evaluation_timestamp_seconds", registry) == clock.now
    # the evaluation that first sees a model creates its counters at 0 (increase() sees the first event)
    assert sample("calmon_recalibrations_total", registry, model="qa", segment="*", outcome="failed") == 0
    # the read API serves the same snapshot
    detail = client.get("/v1/models/qa").json()
    assert {w["window"] for w in detail["windows"]} == {"1h", "24h", "7d"}
    reliability = client.get("/v1/models/qa/reliability", params={"window": "1h", "score": "raw"}).json()
    assert reliability["ece"] == pytest.approx(ece) and len(reliability["bins"]) == 15
    assert client.get("/v1/models/qa/reliability", params={"window": "5m"}).status_code == 422
    unknown = client.get("/v1/models/zz/reliability")
    assert unknown.status_code == 404 and unknown.json()["field"] == "model"
    typo = client.get("/v1/models/qa/reliability", params={"segment": "nope"})
    assert typo.status_code == 404 and typo.json()["field"] == "segment"
    text = client.get("/metrics").text
    assert "calmon_expected_calibration_error{" in text and "calmon_window_confidence_bucket{" in text


def test_only_the_lease_holder_runs_jobs_and_the_lease_moves_after_expiry(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    clock = Clock()
    settings = make_settings(scheduler={"lease_ttl_seconds": 10})
    a = build_daemon(engine, settings, clock, "replica-a").scheduler
    b = build_daemon(engine, settings, clock, "replica-b").scheduler
    a.renew_lease()
    b.renew_lease()
    assert (a.is_leader, b.is_leader) == (True, False)
    clock.now += 5
    a.renew_lease()  # renewal keeps it
    b.renew_lease()
    assert (a.is_leader, b.is_leader) == (True, False)
    clock.now += 11  # a died: no renewal for longer than the TTL
    b.renew_lease()
    assert b.is_leader
    a.renew_lease()
    assert not a.is_leader  # the old holder cannot take it back while b renews


def test_a_tick_that_outlived_its_lease_writes_and_queues_nothing(
    engine: Engine, make_settings: MakeSettings
) -> None:
    clock = Clock()
    settings = make_settings(
        scheduler={"lease_ttl_seconds": 10}, drift={"consecutive": 1, "min_labelled": 500}
    )
    a = build_daemon(engine, settings, clock, "replica-a")
    b = build_daemon(engine, settings, clock, "replica-b")
    rng = np.random.default_rng(5)
    p = rng.uniform(0.5, 1.0, 2000)
    truth = rng.random(2000) < p - 0.3  # overconfident: a completed tick would raise drift and queue a refit
    with TestClient(a.app) as client:
        post_predictions(client, [{"model": "m", "id": f"p{i}", "confidence": float(v), "ts": clock.now - 30}
                                  for i, v in enumerate(p)])  # fmt: skip
        post_feedback(
            client, [{"model": "m", "id": f"p{i}", "correct": bool(t)} for i, t in enumerate(truth)]
        )
    a.scheduler.renew_lease()
    assert a.scheduler.is_leader
    clock.now += 11  # a stalls past its TTL (a GC pause, a partition); b takes over
    b.scheduler.renew_lease()
    assert b.scheduler.is_leader
    with pytest.raises(LeaseLost):
        a.scheduler.evaluate_once()
    assert not a.scheduler.is_leader and a.queue.waiting() == []
    with engine.connect() as conn:
        assert list_events(conn, kind="drift_detected") == []
        assert load_snapshot(conn, SNAPSHOT) is None
    b.scheduler.evaluate_once()  # the new leader does write
    with engine.connect() as conn:
        assert [e["payload"]["kind"] for e in list_events(conn, kind="drift_detected", model="m")]
    assert b.queue.waiting() == [("m", "*")]


def test_queued_recalibrations_run_once_each_and_stop_when_the_lease_is_lost(
    engine: Engine, make_settings: MakeSettings
) -> None:
    ran: list[tuple[str, str, str]] = []
    held = [True]

    class Runner:
        def run(
            self,
            model: str,
            segment: str = "*",
            trigger: str = "manual",
            dry_run: bool = False,
            since: float | None = None,
        ) -> Any:
            ran.append((model, segment, trigger))
            return None

    queue = RecalibrationQueue(Runner(), may_write=lambda: held[0])
    assert queue.submit("m", "*", "drift") and not queue.submit("m", "*", "drift")  # once per series
    assert queue.submit("m", "billing", "drift")
    queue.drain()
    assert ran == [("m", "*", "drift"), ("m", "billing", "drift")] and queue.waiting() == []
    queue.submit("n", "*", "schedule")
    held[0] = False
    queue.drain()
    assert ran[-1][0] == "m" and queue.waiting() == []  # dropped: the new leader judges afresh


def test_a_failing_job_is_counted_and_does_not_stop_the_scheduler(parts: Parts) -> None:
    scheduler, registry = parts.daemon.scheduler, parts.daemon.exposition
    scheduler.lease.is_leader = True
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    job = scheduler.guard("evaluate", broken)
    job()
    job()  # runs again next tick
    assert len(calls) == 2
    assert sample("calmon_job_runs_total", registry, task="evaluate", outcome="failure") == 2
    scheduler.lease.is_leader = False
    job()
    assert len(calls) == 2  # leader-only jobs are skipped on followers


def test_a_slow_job_never_blocks_ingest(engine: Engine, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(evaluation={"interval_seconds": 0.2}, scheduler={"lease_ttl_seconds": 3})
    built = build_daemon(engine, settings, time.time, "replica-slow")
    scheduler = built.scheduler
    release = threading.Event()
    started = threading.Event()
    original = scheduler.evaluate_once

    def slow() -> Any:
        started.set()
        release.wait(10)
        return original()

    scheduler.evaluate_once = slow  # type: ignore[method-assign]
    scheduler.start()
    try:
        assert started.wait(10)
        with TestClient(built.app) as client:
            began = time.perf_counter()
            for i in range(5):
                response = post_predictions(client, [{"model": "m", "id": f"x{i}", "confidence": 0.5}])
                assert response.status_code == 200
            assert time.perf_counter() - began < 5  # the evaluation is still stuck meanwhile
            assert not release.is_set()
    finally:
        release.set()
        scheduler.shutdown()


def test_retention_deletes_only_folded_raw_rows_and_keeps_buckets_longer(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    from sqlalchemy import func, select

    from monitor.store.ingest import apply_feedback, insert_predictions
    from monitor.store.records import FeedbackItem, PredictionRow
    from monitor.store.schema import pending_feedback, predictions, sketch_bins

    day = 86400.0
    clock = Clock()
    settings = make_settings(retention={"raw_days": 30, "sketch_days": 60, "batch_rows": 100})
    parts = build_daemon(engine, settings, clock, "replica-r")
    scheduler = parts.scheduler

    def row(pid: str, age_days: float) -> PredictionRow:
        return PredictionRow(
            "m", pid, "default", clock.now - age_days * day, "confidence", 0.7, None, None, 0.7, "1"
        )

    with engine.begin() as conn:
        insert_predictions(
            conn, [row(f"old{i}", 40) for i in range(250)] + [row("ancient", 90), row("new", 1)], 0
        )
        apply_feedback(conn, [FeedbackItem("m", "old0", True, None)], clock.now)
        apply_feedback(
            conn, [FeedbackItem("m", "orphan", True, None)], clock.now - 40 * day
        )  # parked long ago
    scheduler.tick.fold(clock.now)
    with engine.begin() as conn:
        insert_predictions(conn, [row("old-unfolded", 40)], 0)  # not yet in the buckets: must survive
        apply_feedback(conn, [FeedbackItem("m", "old1", False, None)], clock.now)  # label not folded yet

    def count(table: Any, *where: Any) -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

    buckets_before = count(sketch_bins)
    deleted = scheduler.retention_once()
    with engine.connect() as conn:  # closed at once: an open SQLite transaction would hold the write lock
        remaining = {r for (r,) in conn.execute(select(predictions.c.prediction_id))}
    assert remaining == {"new", "old-unfolded", "old1"}  # folded old rows gone, in batches of 100
    assert count(pending_feedback) == 0  # parked feedback older than raw_days is gone
    assert count(sketch_bins) < buckets_before  # the 90-day bucket passed sketch_days
    assert count(sketch_bins, sketch_bins.c.bucket_start > clock.now - 60 * day) == buckets_before - 2
    assert deleted == 249 + 1 + 1 + 2  # folded old rows (not old1), "ancient", the orphan, 2 bucket rows


def test_one_segment_cap_for_windows_gauges_and_binned_counters(
    engine: Engine, make_settings: MakeSettings
) -> None:
    clock = Clock()
    daemon = build_daemon(engine, make_settings(evaluation={"max_segments": 2}), clock, "replica-cap")
    records = [
        {"model": "m", "id": f"{s}{i}", "segment": s, "confidence": 0.5 + i / 100, "ts": clock.now - 60}
        for s in ("first", "second", "third", "fourth")
        for i in range(30)
    ]
    with TestClient(daemon.app) as client:
        assert post_predictions(client, records).json()["accepted"] == 120
        post_feedback(client, [{"model": "m", "id": r["id"], "correct": True} for r in records])
    daemon.scheduler.renew_lease()
    snapshot = daemon.scheduler.evaluate_once()
    assert {s.segment for s in snapshot.stats} == {"first", "second", "other", "*"}
    binned = {key[1] for key, _ in daemon.binned.items()}
    assert binned == {"first", "second", "other"}
    other = snapshot.find("m", "other", "1h", "raw")
    assert other is not None and other.predictions == 60  # third and fourth, together
