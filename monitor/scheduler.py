"""Background jobs (APScheduler 3.x) with a database lease so only one replica runs them.

Jobs have stable ids, ``max_instances=1``, coalescing and a misfire grace. A failing job is logged,
counted (``calmon_job_runs_total{outcome="failure"}``) and simply runs again at its next tick; it
never stops the scheduler or the daemon. Jobs run in the scheduler's own threads, so a slow job
never blocks request handling.

* ``leader-lease``: take or renew the lease (every TTL/3).
* ``evaluate`` (leader): fold new rows into the sketch buckets, evaluate every window, publish the
  snapshot (in memory and in the database for the other replicas).
* ``retention`` (leader): delete aggregated raw rows, parked feedback and sketch buckets past their
  retention, in bounded batches.
* ``reconcile-pending`` (leader): join feedback parked during a cross-replica race.
* ``snapshot-refresh`` (followers): adopt the leader's latest snapshot.
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
from sqlalchemy import Engine, and_, delete, or_, select

from monitor.collector.serving import RegistryScorer
from monitor.config import Settings, parse_duration
from monitor.evaluation.policy import DriftEvent, DriftPolicy
from monitor.evaluation.rolling import RollingWindows
from monitor.evaluation.snapshot import Snapshot, SnapshotHolder
from monitor.evaluation.windows import ALL_SEGMENTS, WindowSpec, evaluate_periods, mark_calibrator_changes
from monitor.exporter import BinnedCounters
from monitor.store import calibrators as registry
from monitor.store.aggregates import aggregate_pending
from monitor.store.coordination import load_snapshot, release_lease, save_snapshot, try_acquire_lease
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event, calibrator_changes
from monitor.store.ingest import reconcile_pending
from monitor.store.schema import pending_feedback, predictions, sketch_bins
from monitor.telemetry import ServiceMetrics

log = logging.getLogger("calmon.scheduler")
LEASE = "scheduler"
RECALIBRATE_ON = ("calibration", "calibration_test")
SNAPSHOT = "evaluation"
DAY = 86400.0


def default_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        holder: SnapshotHolder,
        metrics: ServiceMetrics,
        binned: BinnedCounters,
        clock: Callable[[], float] = time.time,
        published: Callable[[], None] = lambda: None,
        scorer: RegistryScorer | None = None,
        recalibrate: Callable[..., Any] | None = None,
        notify: Callable[[str, str | None, str | None, dict[str, Any]], None] = lambda *args: None,
    ):
        self.engine = engine
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.binned = binned
        self.clock = clock
        self.published = published  # called after each new snapshot (renders the exposition)
        self.scorer = scorer  # refreshed on every replica: promotions reach ingest within the interval
        self.recalibrate = recalibrate  # (model, segment, trigger) -> Outcome; None: no automatic runs
        self.notify = notify
        self.instance_id = settings.scheduler.instance_id or default_instance_id()
        self.is_leader = False
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(settings.scheduler.misfire_grace_seconds),
            },
        )
        self.windows = [WindowSpec(name, parse_duration(name)) for name in settings.evaluation.windows]
        cfg = settings.evaluation
        self.policy = DriftPolicy(settings.drift_for)
        self.rolling = RollingWindows(
            [(w.name, w.seconds) for w in self.windows], cfg.bucket_seconds, cfg.fine_bins, cfg.reload_seconds
        )

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        cfg = self.settings.scheduler
        add = self._scheduler.add_job
        add(
            self._guard("leader-lease", self.renew_lease, leader_only=False),
            "interval",
            seconds=cfg.lease_ttl_seconds / 3,
            id="leader-lease",
            next_run_time=_now(),
        )
        add(
            self._guard("evaluate", self.evaluate_once),
            "interval",
            seconds=self.settings.evaluation.interval_seconds,
            id="evaluate",
            next_run_time=_now(),
        )
        add(
            self._guard("retention", self.retention_once),
            "interval",
            seconds=self.settings.retention.interval_seconds,
            id="retention",
        )
        add(
            self._guard("reconcile-pending", self.reconcile_once),
            "interval",
            seconds=cfg.reconcile_interval_seconds,
            id="reconcile-pending",
        )
        add(
            self._guard("snapshot-refresh", self.refresh_snapshot, leader_only=False),
            "interval",
            seconds=max(1.0, self.settings.evaluation.interval_seconds / 2),
            id="snapshot-refresh",
        )
        if self.recalibrate is not None and self.settings.recalibration.schedule:
            trigger = CronTrigger.from_crontab(self.settings.recalibration.schedule, timezone="UTC")
            add(
                self._guard("recalibrate-scheduled", self.recalibrate_all),
                trigger,
                id="recalibrate-scheduled",
            )
        if self.scorer is not None:
            add(
                self._guard("calibrators-refresh", self.refresh_calibrators, leader_only=False),
                "interval",
                seconds=self.settings.recalibration.serving_refresh_seconds,
                id="calibrators-refresh",
            )
        self._scheduler.start()
        log.info("scheduler started", extra={"instance": self.instance_id})

    def shutdown(self) -> None:
        self._scheduler.shutdown(wait=True)
        if self.is_leader:
            try:
                with self.engine.begin() as conn:
                    release_lease(conn, LEASE, self.instance_id)
            except Exception:
                log.exception("could not release the scheduler lease; it expires by itself")
        self.is_leader = False
        self.metrics.leader.set(0)

    def _guard(self, name: str, job: Callable[[], Any], leader_only: bool = True) -> Callable[[], None]:
        def run() -> None:
            if leader_only and not self.is_leader:
                return
            started = time.perf_counter()
            try:
                job()
            except Exception:
                self.metrics.job_runs.labels(name, "failure").inc()
                log.exception("job failed; it runs again at its next tick", extra={"job": name})
            else:
                self.metrics.job_runs.labels(name, "success").inc()
            finally:
                self.metrics.job_duration.labels(name).observe(time.perf_counter() - started)

        return run

    # ------------------------------------------------------------------------------------ jobs
    def renew_lease(self) -> None:
        try:
            with self.engine.begin() as conn:
                leader = try_acquire_lease(
                    conn, LEASE, self.instance_id, self.settings.scheduler.lease_ttl_seconds, self.clock()
                )
        except Exception:
            self._set_leader(False)  # cannot prove we hold it: stop acting as leader
            raise
        self._set_leader(leader)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            log.info("scheduler leadership changed", extra={"instance": self.instance_id, "leader": leader})
            self.rolling.invalidate()  # whatever happened meanwhile, start from the database
        self.is_leader = leader
        self.metrics.leader.set(1 if leader else 0)

    def aggregate_once(self, batch: int = 50_000) -> int:
        """Fold every row needing work into the buckets, one bounded transaction per batch."""
        cfg = self.settings.evaluation
        total = 0
        while True:
            with self.engine.begin() as conn:
                run = aggregate_pending(conn, cfg.bucket_seconds, cfg.fine_bins, batch)
            if not run.rows:
                return total
            self.binned.add(run.deltas)
            self.rolling.apply(run.deltas)
            total += run.rows

    def evaluate_once(self) -> Snapshot:
        cfg = self.settings.evaluation
        now = self.clock()
        if self.rolling.needs_load(now):
            # Load before folding new rows: the deltas folded next are then exactly what is missing.
            with self.engine.connect().execution_options(**READ_ONLY) as conn:
                self.rolling.load(conn, now)
                conn.rollback()
        self.aggregate_once()
        caps = {m: c.max_segments for m, c in self.settings.models.items() if c.max_segments}
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            self.rolling.advance(conn, now)
            calibrators = [
                {"model": r.model, "segment": r.segment, "version": str(r.version), "method": r.method}
                for r in registry.all_active(conn)
            ]
            changes = calibrator_changes(conn)
            conn.rollback()
        periods = {w.name: self.rolling.periods(w.name) for w in self.windows}
        stats = evaluate_periods(
            self.windows, periods, cfg.ece_bins, caps, cfg.max_segments, cfg.bootstrap_draws
        )
        mark_calibrator_changes(stats, {w.name: w.seconds for w in self.windows}, changes, now)
        models = {s.model for s in stats}
        served = {(c["model"], c["segment"]) for c in calibrators}
        calibrators += [
            {"model": m, "segment": "*", "version": "identity", "method": "identity"}
            for m in sorted(models)
            if not any(model == m for model, _ in served)
        ]
        active, drift_events = self.policy.observe(stats, now)
        drift = [{"model": m, "segment": s, "kind": k, "active": a} for (m, s, k), a in active.items()]
        snapshot = Snapshot(now, stats, calibrators, drift)
        if drift_events:
            with self.engine.begin() as conn:
                for event in drift_events:
                    append_event(conn, "drift_detected", now, event.payload(), event.model, event.segment)
            for event in drift_events:
                self.notify("drift_detected", event.model, event.segment, event.payload())
                log.warning(
                    "drift detected",
                    extra={
                        "model": event.model,
                        "segment": event.segment,
                        "kind": event.kind,
                        "actionable": event.actionable,
                    },
                )
        self.holder.set(snapshot)
        self.metrics.last_evaluation.set(now)
        self.metrics.initialise({s.model for s in stats})
        self.published()
        if self.recalibrate is not None and self.settings.recalibration.on_drift:
            for model, segment in drift_targets(drift_events):
                self.recalibrate(model, segment, "drift")
        with self.engine.begin() as conn:
            save_snapshot(conn, SNAPSHOT, now, orjson.dumps(snapshot.as_dict()).decode())
        return snapshot

    def refresh_snapshot(self) -> None:
        if self.is_leader:
            return
        current = self.holder.get()
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            found = load_snapshot(conn, SNAPSHOT, newer_than=current.created_at if current else None)
            conn.rollback()
        if found is not None:
            snapshot = Snapshot.from_dict(orjson.loads(found[1]))
            self.holder.set(snapshot)
            self.metrics.last_evaluation.set(snapshot.created_at)
            self.metrics.initialise({s.model for s in snapshot.stats})
            self.published()

    def recalibrate_all(self) -> None:
        snapshot = self.holder.get()
        if self.recalibrate is None or snapshot is None:
            return
        for model in sorted({s.model for s in snapshot.stats}):
            self.recalibrate(model, "*", "schedule")

    def refresh_calibrators(self) -> None:
        if self.scorer is not None:
            self.scorer.refresh(self.engine, self.clock())

    def reconcile_once(self) -> int:
        with self.engine.begin() as conn:
            return reconcile_pending(conn)

    def retention_once(self) -> int:
        """Delete raw rows and parked feedback past ``raw_days`` (only rows already in the buckets)
        and buckets past ``sketch_days``, in bounded batches; rows deleted."""
        cfg = self.settings.retention
        now = self.clock()
        raw_cutoff = now - cfg.raw_days * DAY
        done = ~or_(
            predictions.c.agg_state == 0,
            and_(predictions.c.agg_state == 1, predictions.c.correct.is_not(None)),
        )
        total = 0
        while True:
            with self.engine.begin() as conn:
                expired = (
                    select(predictions.c.pk).where(predictions.c.ts < raw_cutoff, done).limit(cfg.batch_rows)
                )
                pks = [pk for (pk,) in conn.execute(expired)]
                if pks:
                    conn.execute(delete(predictions).where(predictions.c.pk.in_(pks)))
            total += len(pks)
            if len(pks) < cfg.batch_rows:
                break
        with self.engine.begin() as conn:
            total += conn.execute(
                delete(pending_feedback).where(pending_feedback.c.received_at < raw_cutoff)
            ).rowcount
            total += conn.execute(
                delete(sketch_bins).where(sketch_bins.c.bucket_start < now - cfg.sketch_days * DAY)
            ).rowcount
        return total


def drift_targets(events: list[DriftEvent]) -> list[tuple[str, str]]:
    """The series to recalibrate for this tick's drift events: one run per drifting series (the
    policy's cooldown keeps it to one per episode), only for calibration kinds (a label-free shift
    alone cannot be fitted), and when a model drifts model-wide, only the model-wide run: its
    segments are judged again against the fix instead of racing it."""
    drifting = {(e.model, e.segment) for e in events if e.kind in RECALIBRATE_ON}
    model_wide = {model for model, segment in drifting if segment == ALL_SEGMENTS}
    return sorted((m, s) for m, s in drifting if s == ALL_SEGMENTS or m not in model_wide)


def _now() -> datetime:
    return datetime.now(UTC)
