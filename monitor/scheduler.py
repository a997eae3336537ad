"""Background jobs (APScheduler 3.x) with a database lease so only one replica runs them.

Jobs have stable ids, ``max_instances=1``, coalescing and a misfire grace. A failing job is logged,
counted (``calmon_job_runs_total{outcome="failure"}``) and simply runs again at its next tick; it
never stops the scheduler or the daemon. Jobs run in the scheduler's own threads, so a slow job
never blocks request handling.

* ``leader-lease``: take or renew the lease (every TTL/3).
* ``evaluate`` (leader): the evaluation tick (``evaluation.tick``: fold, windows, judge, publish).
* ``recalibrate-queued`` (leader): run the recalibrations the tick or the schedule queued, one at a
  time, so a slow fit never delays an evaluation.
* ``recalibrate-scheduled`` (leader, cron): queue a model-wide run per known model.
* ``retention`` (leader): delete folded raw rows, parked feedback and sketch buckets past their
  retention, in bounded batches.
* ``reconcile-pending`` (leader): join feedback parked during a cross-replica race.
* ``snapshot-refresh`` (followers): adopt the leader's latest snapshot.
* ``calibrators-refresh`` (every replica): reload the serving calibrators.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine

from monitor.config import Settings
from monitor.evaluation.snapshot import Snapshot, SnapshotHolder
from monitor.evaluation.tick import SNAPSHOT, EvaluationTick
from monitor.lease import LeaderLease
from monitor.recalibration.service import RecalibrationQueue
from monitor.store import retention
from monitor.store.coordination import load_snapshot
from monitor.store.engine import READ_ONLY
from monitor.store.ingest import reconcile_pending
from monitor.telemetry import ServiceMetrics
from monitor.vocabulary import MODEL_WIDE, JobOutcome, Trigger

__all__ = ["Scheduler", "SnapshotPublisher", "default_instance_id"]

log = logging.getLogger("calmon.scheduler")
DAY = 86400.0


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SnapshotPublisher:
    """Makes a snapshot what this process serves: the read API, the counters, the exposition.

    The leader's tick calls it with each new snapshot; followers with the leader's, as they adopt it.
    """

    def __init__(self, holder: SnapshotHolder, metrics: ServiceMetrics, rendered: Callable[[], None]):
        self.holder = holder
        self._metrics = metrics
        self._rendered = rendered  # re-renders the snapshot part of /metrics

    def __call__(self, snapshot: Snapshot) -> None:
        self.holder.set(snapshot)
        self._metrics.last_evaluation.set(snapshot.created_at)
        self._metrics.initialise({s.model for s in snapshot.stats})
        self._rendered()


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        metrics: ServiceMetrics,
        tick: EvaluationTick,
        publisher: SnapshotPublisher,
        lease: LeaderLease,
        *,
        clock: Callable[[], float] = time.time,
        queue: RecalibrationQueue | None = None,
        refresh_calibrators: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.tick = tick
        self.publisher = publisher
        self.holder = publisher.holder
        self.lease = lease
        self.clock = clock
        self.queue = queue  # None: no automatic recalibration in this process
        self.refresh_calibrators = refresh_calibrators  # promotions reach ingest within the interval
        lease.on_change(self._leadership_changed)
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.scheduler.misfire_grace_seconds),
            },
        )

    # ------------------------------------------------------------------------------- lifecycle
    def _jobs(self) -> list[tuple[str, Callable[[], Any], bool, dict[str, Any]]]:
        """(id, job, leader only, trigger arguments) of every job this replica runs."""
        cfg, evaluation = self.settings.scheduler, self.settings.evaluation
        jobs = [
            (
                "leader-lease",
                self.renew_lease,
                False,
                {**every(cfg.lease_ttl_seconds / 3), "next_run_time": _now()},
            ),
            (
                "evaluate",
                self.evaluate_once,
                True,
                {**every(evaluation.interval_seconds), "next_run_time": _now()},
            ),
            ("retention", self.retention_once, True, every(self.settings.retention.interval_seconds)),
            ("reconcile-pending", self.reconcile_once, True, every(cfg.reconcile_interval_seconds)),
            (
                "snapshot-refresh",
                self.refresh_snapshot,
                False,
                every(max(1.0, evaluation.interval_seconds / 2)),
            ),
        ]
        if self.queue is not None:
            jobs.append(
                ("recalibrate-queued", self.recalibrate_queued, True, every(cfg.recalibration_poll_seconds))
            )
            if self.settings.recalibration.schedule:
                cron = CronTrigger.from_crontab(self.settings.recalibration.schedule, timezone="UTC")
                jobs.append(("recalibrate-scheduled", self.recalibrate_all, True, {"trigger": cron}))
        if self.refresh_calibrators is not None:
            refresh = self.settings.recalibration.serving_refresh_seconds
            jobs.append(("calibrators-refresh", self.refresh_calibrators, False, every(refresh)))
        return jobs

    def start(self) -> None:
        for name, job, leader_only, trigger in self._jobs():
            self._scheduler.add_job(self.guard(name, job, leader_only), id=name, **trigger)
        self._scheduler.start()
        log.info("scheduler started", extra={"instance": self.lease.instance_id})

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=True)
        self.lease.release()
        self.metrics.leader.set(0)

    @property
    def is_leader(self) -> bool:
        return self.lease.is_leader

    def guard(self, name: str, job: Callable[[], Any], leader_only: bool = True) -> Callable[[], None]:
        """The job as the scheduler runs it: leader-only jobs skip on followers; failures are counted."""

        def run() -> None:
            if leader_only and not self.is_leader:
                return
            started = time.perf_counter()
            try:
                job()
            except Exception:
                self.metrics.job_runs.labels(name, JobOutcome.FAILURE).inc()
                log.exception("job failed; it runs again at its next tick", extra={"job": name})
            else:
                self.metrics.job_runs.labels(name, JobOutcome.SUCCESS).inc()
            finally:
                self.metrics.job_duration.labels(name).observe(time.perf_counter() - started)

        return run

    # ---------------------------------------------------------------------------------- leases
    def renew_lease(self) -> None:
        try:
            self.lease.renew()
        finally:
            self.metrics.leader.set(1 if self.lease.is_leader else 0)

    def _leadership_changed(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        self.tick.invalidate()  # whatever happened meanwhile, start from the database
        if self.queue is not None:
            self.queue.clear()

    # ------------------------------------------------------------------------------------ jobs
    def evaluate_once(self) -> Snapshot:
        snapshot = self.tick.run()
        if self.queue is not None:
            self.queue.retry_parked()  # drift that waited for labels since its change point
        return snapshot

    def refresh_snapshot(self) -> None:
        if self.is_leader:
            return
        current = self.holder.get()
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            found = load_snapshot(conn, SNAPSHOT, newer_than=current.created_at if current else None)
            conn.rollback()
        if found is not None:
            self.publisher(Snapshot.from_dict(orjson.loads(found[1])))

    def recalibrate_queued(self) -> None:
        if self.queue is not None:
            self.queue.drain()

    def recalibrate_all(self) -> None:
        """The cron schedule: queue a model-wide run of every model the snapshot knows."""
        snapshot = self.holder.get()
        if self.queue is None or snapshot is None:
            return
        for model in sorted({s.model for s in snapshot.stats}):
            self.queue.submit(model, MODEL_WIDE, Trigger.SCHEDULE)

    def reconcile_once(self) -> int:
        with self.engine.begin() as conn:
            return reconcile_pending(conn)

    def retention_once(self) -> int:
        """Delete raw rows and parked feedback past ``raw_days`` (only rows already in the buckets)
        and buckets past ``sketch_days``, in bounded batches; rows deleted."""
        cfg = self.settings.retention
        now = self.clock()
        raw_cutoff = now - cfg.raw_days * DAY
        total = 0
        while True:
            deleted = retention.delete_folded_batch(self.engine, raw_cutoff, cfg.batch_rows)
            total += deleted
            if deleted < cfg.batch_rows:
                break
        with self.engine.begin() as conn:
            total += retention.delete_expired_pending(conn, raw_cutoff)
            total += retention.delete_expired_buckets(conn, now - cfg.sketch_days * DAY)
            total += retention.delete_expired_batches(conn, now - cfg.sketch_days * DAY, raw_cutoff)
        return total


def every(seconds: float) -> dict[str, Any]:
    return {"trigger": "interval", "seconds": seconds}


def _now() -> datetime:
    return datetime.now(UTC)
