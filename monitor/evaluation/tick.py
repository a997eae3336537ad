"""The evaluation tick as a pipeline of named steps: fold -> windows -> judge -> publish -> queue.

* **fold**: new predictions and labels into the sketch buckets (``store.aggregates``), the deltas
  passed on to the rolling windows and to every observer (the binned counters).
* **windows**: ``WindowStats`` of every series and window from the rolling sketches, flagged where
  the serving calibrator changed inside the window.
* **judge**: the drift policy's verdicts and new ``drift_detected`` events.
* **publish**: the snapshot to this process (``publish`` callback: holder, exposition) and to the
  database for the other replicas, with the events; only while this replica still holds the lease.
* **queue**: drift-triggered recalibrations handed to the recalibration queue. The tick never
  waits on a fit: a slow fit neither delays the snapshot nor skips the next tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine

from monitor.config import Settings, parse_duration
from monitor.evaluation.policy import DriftEvent, DriftPolicy, drift_targets
from monitor.evaluation.rolling import RollingWindows
from monitor.evaluation.snapshot import Snapshot
from monitor.evaluation.windows import WindowSpec, WindowStats, evaluate_periods, mark_calibrator_changes
from monitor.store import calibrators as calibrator_store
from monitor.store.aggregates import BucketDelta, aggregate_pending
from monitor.store.coordination import save_snapshot
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event, calibrator_changes
from monitor.store.segments import load_positions, registered_series
from monitor.vocabulary import IDENTITY, MODEL_WIDE, EventKind, Trigger

__all__ = ["SNAPSHOT", "EvaluationTick", "LeaseLost"]

log = logging.getLogger("calmon.evaluation")
SNAPSHOT = "evaluation"  # the name of the shared snapshot row
Notify = Callable[[str, str | None, str | None, dict[str, Any]], None]
Submit = Callable[[str, str, str], bool]


class LeaseLost(RuntimeError):
    """The tick outlived this replica's lease: it computed, but writes and queues nothing."""


class EvaluationTick:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        observers: Sequence[Callable[[list[BucketDelta]], None]] = (),
        publish: Callable[[Snapshot], None] = lambda snapshot: None,
        may_write: Callable[[], bool] = lambda: True,
        submit: Submit | None = None,
        notify: Notify = lambda *args: None,
        clock: Callable[[], float] = time.time,
    ):
        self.engine = engine
        self.settings = settings
        self.observers = observers
        self._publish = publish
        self.may_write = may_write
        self.submit = submit  # None: drift never starts a recalibration here
        self.notify = notify
        self.clock = clock
        cfg = settings.evaluation
        self.windows = [WindowSpec(name, parse_duration(name)) for name in cfg.windows]
        self.policy = DriftPolicy(settings.drift_for)
        self.rolling = RollingWindows(
            [(w.name, w.seconds) for w in self.windows], cfg.bucket_seconds, cfg.fine_bins, cfg.reload_seconds
        )

    def run(self) -> Snapshot:
        now = self.clock()
        self.fold(now)
        stats, calibrators = self.evaluate_windows(now)
        drift, events = self.judge(stats, now)
        snapshot = Snapshot(now, stats, calibrators, drift)
        self.publish(snapshot, events)
        self.queue(events)
        return snapshot

    # ------------------------------------------------------------------------------------ steps
    def fold(self, now: float, batch: int = 50_000) -> int:
        """Fold every row needing work into the buckets, one bounded transaction per batch."""
        if self.rolling.needs_load(now):
            # Load before folding new rows: the deltas folded next are then exactly what is missing.
            with self.engine.connect().execution_options(**READ_ONLY) as conn:
                self.rolling.load(conn, now)
                conn.rollback()
        cfg = self.settings.evaluation
        total = 0
        while True:
            with self.engine.begin() as conn:
                run = aggregate_pending(
                    conn, cfg.bucket_seconds, cfg.fine_bins, batch, self.settings.max_segments_for
                )
            if not run.rows:
                return total
            for observe in self.observers:
                observe(run.deltas)
            self.rolling.apply(run.deltas)
            total += run.rows

    def evaluate_windows(self, now: float) -> tuple[list[WindowStats], list[dict[str, Any]]]:
        """Every window's statistics, and the calibrators serving each series."""
        cfg = self.settings.evaluation
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            self.rolling.advance(conn, now)
            active = calibrator_store.all_active(conn)
            changes = calibrator_changes(conn)
            positions = load_positions(conn)
            conn.rollback()
        periods = {w.name: self.rolling.periods(w.name) for w in self.windows}
        series_of = registered_series(positions, self.settings.max_segments_for)
        stats = evaluate_periods(self.windows, periods, cfg.ece_bins, series_of, cfg.bootstrap_draws)
        mark_calibrator_changes(stats, {w.name: w.seconds for w in self.windows}, changes, now)
        calibrators = [
            {"model": r.model, "segment": r.segment, "version": str(r.version), "method": r.method}
            for r in active
        ]
        served = {r.model for r in active}
        calibrators += [
            {"model": m, "segment": MODEL_WIDE, "version": IDENTITY, "method": IDENTITY}
            for m in sorted({s.model for s in stats} - served)
        ]
        return stats, calibrators

    def judge(self, stats: list[WindowStats], now: float) -> tuple[list[dict[str, Any]], list[DriftEvent]]:
        """The policy's flag per (model, segment, kind), and the drift events this tick raises."""
        active, events = self.policy.observe(stats, now)
        drift = [{"model": m, "segment": s, "kind": str(k), "active": a} for (m, s, k), a in active.items()]
        return drift, events

    def publish(self, snapshot: Snapshot, events: list[DriftEvent]) -> None:
        """Events and snapshot to the database and to this process, if this replica still leads."""
        if not self.may_write():
            raise LeaseLost("the scheduler lease expired during the evaluation; nothing written")
        body = orjson.dumps(snapshot.as_dict()).decode()
        with self.engine.begin() as conn:
            for event in events:
                append_event(
                    conn,
                    EventKind.DRIFT_DETECTED,
                    snapshot.created_at,
                    event.payload(),
                    event.model,
                    event.segment,
                )
            save_snapshot(conn, SNAPSHOT, snapshot.created_at, body)
        self._publish(snapshot)
        for event in events:
            self.notify(EventKind.DRIFT_DETECTED, event.model, event.segment, event.payload())
            log.warning(
                "drift detected",
                extra={
                    "model": event.model,
                    "segment": event.segment,
                    "kind": str(event.kind),
                    "actionable": event.actionable,
                },
            )

    def queue(self, events: list[DriftEvent]) -> None:
        """Hand drift-triggered recalibrations to the queue (a separate job runs them)."""
        if self.submit is None or not self.settings.recalibration.on_drift:
            return
        for model, segment in drift_targets(events):
            self.submit(model, segment, Trigger.DRIFT)
