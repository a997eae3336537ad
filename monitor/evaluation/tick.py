"""The evaluation tick as a pipeline of named steps: fold -> windows -> judge -> publish -> queue.

* **fold**: new predictions and labels, then sketch batches sent from outside (``POST /v1/sketches``),
  into the sketch buckets (``store.aggregates``, ``store.sketch_batches``), the deltas
  passed on to the rolling windows and to every observer (the binned counters).
* **windows**: ``WindowStats`` of every series and window from the rolling sketches, flagged where
  the serving calibrator changed inside the window.
* **bet**: the drift detectors bet on the labels folded since the previous evaluation
  (``evaluation.evidence``); their new states are committed with the snapshot.
* **judge**: the drift policy's verdicts and new ``drift_detected`` events, and the serving
  calibrators to roll back (served score worse than raw, and miscalibrated, both with evidence).
* **publish**: the snapshot to this process (``publish`` callback: holder, exposition) and to the
  database for the other replicas, with the events, the detectors and the rollbacks, in one
  transaction; only while this replica still holds the lease.
* **queue**: drift-triggered recalibrations handed to the recalibration queue, each with the
  estimated change point to fit after. The tick never waits on a fit: a slow fit neither delays the
  snapshot nor skips the next tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import orjson
from sqlalchemy import Engine

from monitor.config import Settings, parse_duration
from monitor.evaluation.evidence import EvidenceBook, EvidenceRound, epochs_from_changes
from monitor.evaluation.policy import DriftEvent, DriftPolicy, drift_targets
from monitor.evaluation.reference import ReferenceSketches
from monitor.evaluation.rolling import RollingWindows
from monitor.evaluation.snapshot import Snapshot
from monitor.evaluation.windows import WindowSpec, WindowStats, evaluate_periods, mark_calibrator_changes
from monitor.store import calibrators as calibrator_store
from monitor.store import sketch_batches
from monitor.store.aggregates import BucketDelta, aggregate_pending
from monitor.store.coordination import save_snapshot
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event, calibrator_changes
from monitor.store.evidence import PAIRED
from monitor.store.history import ensure_hours
from monitor.store.segments import load_positions, registered_series
from monitor.vocabulary import IDENTITY, MODEL_WIDE, RECALIBRATE_ON, EventKind, Score, Trigger

__all__ = ["SNAPSHOT", "EvaluationTick", "LeaseLost"]

log = logging.getLogger("calmon.evaluation")
SNAPSHOT = "evaluation"  # the name of the shared snapshot row
Notify = Callable[[str, str | None, str | None, dict[str, Any]], None]
Submit = Callable[..., bool]  # (model, segment, trigger, since=change point)


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
        on_calibrator_change: Callable[[], None] = lambda: None,
    ):
        self.engine = engine
        self.settings = settings
        self.observers = observers
        self._publish = publish
        self.may_write = may_write
        self.submit = submit  # None: drift never starts a recalibration here
        self.notify = notify
        self.clock = clock
        self.on_calibrator_change = on_calibrator_change  # this replica serves a rollback at once
        cfg = settings.evaluation
        self.windows = [WindowSpec(name, parse_duration(name)) for name in cfg.windows]
        self.policy = DriftPolicy(settings.drift_for, {w.name: w.seconds for w in self.windows})
        self.rolling = RollingWindows(
            [(w.name, w.seconds) for w in self.windows], cfg.bucket_seconds, cfg.fine_bins, cfg.reload_seconds
        )
        self.evidence = EvidenceBook(cfg.ece_bins, settings.drift_for, cfg.interval_seconds)
        self.references = ReferenceSketches(cfg.fine_bins, self.windows[0].seconds, settings.drift_for)
        self._round = EvidenceRound(None)
        self._hours_checked = False  # the hourly rollup matches ece_bins (store.history.ensure_hours)

    def invalidate(self) -> None:
        """Start again from the database (leadership changed: another leader may have moved on)."""
        self.rolling.invalidate()
        self.evidence.invalidate()

    def run(self) -> Snapshot:
        now = self.clock()
        self.fold(now)
        stats, calibrators = self.evaluate_windows(now)
        drift, events = self.judge(stats, now)
        rollbacks = self.watch_serving(now)
        evidence = [v.as_dict() for v in self._round.verdicts]
        snapshot = Snapshot(now, stats, calibrators, drift, evidence)
        self.publish(snapshot, events, rollbacks)
        active = {(d["model"], d["segment"]) for d in drift if d["active"] and d["kind"] in RECALIBRATE_ON}
        self.queue(events, {(m, s) for m, s, _ in rollbacks}, stats, active)
        return snapshot

    # ------------------------------------------------------------------------------------ steps
    def fold(self, now: float, batch: int = 50_000) -> int:
        """Fold every row needing work into the buckets, one bounded transaction per batch, then every
        sketch batch not folded yet (``store.sketch_batches``); the prediction rows folded."""
        if self.rolling.needs_load(now):
            # Load before folding new rows: the deltas folded next are then exactly what is missing.
            with self.engine.connect().execution_options(**READ_ONLY) as conn:
                self.rolling.load(conn, now)
                conn.rollback()
        cfg = self.settings.evaluation
        if not self._hours_checked:  # once per process: after the migration or an ece_bins change
            with self.engine.begin() as conn:
                if ensure_hours(conn, cfg.ece_bins, cfg.fine_bins):
                    log.info("rebuilt the hourly history rollup", extra={"bins": cfg.ece_bins})
            self._hours_checked = True
        total = 0
        while True:
            with self.engine.begin() as conn:
                run = aggregate_pending(
                    conn,
                    cfg.bucket_seconds,
                    cfg.fine_bins,
                    batch,
                    self.settings.max_segments_for,
                    evidence_bins=cfg.ece_bins,
                    tolerance_of=self.settings.tolerance_for,
                    hour_bins=cfg.ece_bins,
                )
            if not run.rows:
                break
            self._pass_on(run.deltas)
            total += run.rows
        while True:  # then the sketch batches computed outside calmon, one per transaction
            with self.engine.begin() as conn:
                folded = sketch_batches.fold_next(
                    conn, cfg.fine_bins, self.settings.max_segments_for, cfg.ece_bins, now
                )
            if folded is None:
                return total
            batch_id, deltas = folded
            log.info("folded sketch batch", extra={"batch_id": batch_id, "buckets": len(deltas)})
            self._pass_on(deltas)

    def _pass_on(self, deltas: list[BucketDelta]) -> None:
        for observe in self.observers:
            observe(deltas)
        self.rolling.apply(deltas)

    def evaluate_windows(self, now: float) -> tuple[list[WindowStats], list[dict[str, Any]]]:
        """Every window's statistics, and the calibrators serving each series."""
        cfg = self.settings.evaluation
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            self.rolling.advance(conn, now)
            active = calibrator_store.all_active(conn)
            changes = calibrator_changes(conn)
            positions = load_positions(conn)
            periods = {w.name: self.rolling.periods(w.name) for w in self.windows}
            models = {model for current, _ in periods.values() for model, _, _ in current}
            reference = self.references.load(conn, models, active, now)
            if not self.evidence.loaded:
                self.evidence.load(conn)
            self._round = self.evidence.observe(conn, now, epochs_from_changes(changes))
            conn.rollback()
        series_of = registered_series(positions, self.settings.max_segments_for)
        stats = evaluate_periods(
            self.windows,
            periods,
            cfg.ece_bins,
            series_of,
            cfg.bootstrap_draws,
            reference=reference,
            advice_targets=self.settings.advice_targets_for,
            advice_alpha=self.settings.advice.alpha,
            advice_curve=self.settings.advice.curve,
        )
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
        active, events = self.policy.observe(stats, now, self._round.verdicts)
        drift = [{"model": m, "segment": s, "kind": str(k), "active": a} for (m, s, k), a in active.items()]
        return drift, events

    def watch_serving(self, now: float) -> list[tuple[str, str, dict[str, Any]]]:
        """Series whose own calibrator to roll back: served score miscalibrated beyond the tolerance
        *and* worse than raw (paired Brier), both detectors in alarm."""
        alarms = {(v.model, v.segment, v.score): v for v in self._round.verdicts if v.alarm}
        found = []
        for (model, segment, score), paired in alarms.items():
            calibrated = alarms.get((model, segment, Score.CALIBRATED))
            if score != PAIRED or calibrated is None:
                continue
            if self.settings.drift_for(model, segment).policy != "evidence":
                continue
            details = {
                "reason": "served confidence miscalibrated beyond the tolerance and worse than raw",
                "evidence": {"calibrated": calibrated.as_dict(), "paired": paired.as_dict()},
            }
            found.append((model, segment, details))
        return found

    def publish(
        self,
        snapshot: Snapshot,
        events: list[DriftEvent],
        rollbacks: Sequence[tuple[str, str, dict[str, Any]]] = (),
    ) -> None:
        """Events, detectors, rollbacks and snapshot to the database and to this process, in one
        transaction, if this replica still leads."""
        if not self.may_write():
            raise LeaseLost("the scheduler lease expired during the evaluation; nothing written")
        body = orjson.dumps(snapshot.as_dict()).decode()
        rolled: list[tuple[str, str, dict[str, Any]]] = []
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
            self.evidence.commit(conn, self._round, snapshot.created_at)
            for model, segment, details in rollbacks:
                record = calibrator_store.active(conn, model, segment)
                if record is not None:
                    old, restored = calibrator_store.rollback(conn, record.id, snapshot.created_at, details)
                    after = {
                        "rolled_back": old.as_dict(),
                        "restored": restored.as_dict() if restored else None,
                    }
                    rolled.append((model, segment, {**details, **after}))
            save_snapshot(conn, SNAPSHOT, snapshot.created_at, body)
        self.evidence.adopt(self._round)
        self._publish(snapshot)
        if rolled:
            self.on_calibrator_change()
        for model, segment, payload in rolled:
            self.notify(EventKind.CALIBRATOR_ROLLED_BACK, model, segment, payload)
            log.warning("serving calibrator rolled back", extra={"model": model, "segment": segment})
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

    def queue(
        self,
        events: list[DriftEvent],
        skip: AbstractSet[tuple[str, str]] = frozenset(),
        stats: Sequence[WindowStats] = (),
        active: AbstractSet[tuple[str, str]] = frozenset(),
    ) -> None:
        """Hand drift-triggered recalibrations to the queue (a separate job runs them), each to fit
        after its estimated change point; not for a series whose calibrator was just rolled back.
        ``stats``: this tick's windows, which say what segments each model has; ``active``: the
        series in calibration drift now (see ``policy.drift_targets``)."""
        if self.submit is None or not self.settings.recalibration.on_drift:
            return
        since = {(e.model, e.segment): e.change_point for e in events}
        segments: dict[str, set[str]] = {}
        for s in stats:
            if s.segment != MODEL_WIDE:
                segments.setdefault(s.model, set()).add(s.segment)
        for model, segment in drift_targets(events, segments, active):
            if (model, segment) not in skip:
                self.submit(model, segment, Trigger.DRIFT, since=since.get((model, segment)))
