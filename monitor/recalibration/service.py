"""Recalibration as the daemon runs it: one run told to the rest of the daemon, and the queue of runs.

``Recalibrator.run`` is what the API, the cron schedule and the drift policy call (through the
``RecalibrationTrigger`` protocol): it runs ``job.recalibrate`` and then counts the outcome, makes
this replica serve a promotion at once and notifies. ``RecalibrationQueue`` decouples drift from
fitting: the evaluation tick only *submits* a series; a separate scheduler job drains the queue one
run at a time, so a slow fit never delays a snapshot or skips a tick, and a series already queued
is not queued twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from monitor.config import Settings
from monitor.recalibration.job import Outcome, recalibrate
from monitor.telemetry import ServiceMetrics
from monitor.vocabulary import MODEL_WIDE, EventKind, RecalibrationOutcome, Trigger

__all__ = ["Notify", "RecalibrationQueue", "RecalibrationTrigger", "Recalibrator"]

log = logging.getLogger("calmon.recalibration")
Notify = Callable[[str, str | None, str | None, dict[str, Any]], None]
OUTCOME_EVENTS = {
    RecalibrationOutcome.PROMOTED: EventKind.CALIBRATOR_PROMOTED,
    RecalibrationOutcome.REJECTED: EventKind.CALIBRATOR_REJECTED,
    RecalibrationOutcome.FAILED: EventKind.RECALIBRATION_FAILED,
}


class RecalibrationTrigger(Protocol):
    """Runs one recalibration now and returns its decision (the API's and the queue's view)."""

    def run(
        self,
        model: str,
        segment: str = MODEL_WIDE,
        trigger: str = Trigger.MANUAL,
        dry_run: bool = False,
        since: float | None = None,
    ) -> Outcome: ...


class Recalibrator:
    """One run, then its consequences: the counter, this replica's serving table, the notification."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        metrics: ServiceMetrics,
        on_promoted: Callable[[], None] = lambda: None,
        notify: Notify = lambda *args: None,
        clock: Callable[[], float] = time.time,
    ):
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._on_promoted = on_promoted  # the other replicas follow within serving_refresh_seconds
        self._notify = notify
        self._clock = clock

    def run(
        self,
        model: str,
        segment: str = MODEL_WIDE,
        trigger: str = Trigger.MANUAL,
        dry_run: bool = False,
        since: float | None = None,
    ) -> Outcome:
        outcome = recalibrate(
            self._engine, self._settings, model, segment, trigger, dry_run, self._clock(), since=since
        )
        if dry_run or outcome.outcome == RecalibrationOutcome.WAITING:
            return outcome
        self._metrics.recalibrations.labels(outcome.model, outcome.segment, str(outcome.outcome)).inc()
        if outcome.outcome == RecalibrationOutcome.PROMOTED:
            self._on_promoted()
        payload = {"trigger": trigger, "reason": outcome.reason, "calibrator_id": outcome.calibrator_id}
        if outcome.calibrator_id is not None:  # the status page's decision report, under calmon's URL
            payload["report"] = f"/reports/{outcome.calibrator_id}"
        self._notify(OUTCOME_EVENTS[outcome.outcome], outcome.model, outcome.segment, payload)
        return outcome


class RecalibrationQueue:
    """Series waiting for a recalibration, in submission order, each at most once."""

    def __init__(self, runner: RecalibrationTrigger, may_write: Callable[[], bool] = lambda: True):
        self._runner = runner
        self._may_write = may_write  # the lease, checked again before every run
        self._lock = threading.Lock()
        # (model, segment) -> (trigger, fit only on rows predicted after this time)
        self._waiting: dict[tuple[str, str], tuple[str, float | None]] = {}
        # Runs that waited for labels after a change point: asked again at every evaluation.
        self._parked: dict[tuple[str, str], tuple[str, float | None]] = {}

    def submit(self, model: str, segment: str, trigger: str, since: float | None = None) -> bool:
        """Queue a run; False when the series is already waiting."""
        with self._lock:
            if (model, segment) in self._waiting:
                return False
            self._waiting[(model, segment)] = (trigger, since)
            return True

    def waiting(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._waiting)

    def clear(self) -> None:
        """Forget what is queued (this replica lost the lease: the new leader judges afresh)."""
        with self._lock:
            self._waiting.clear()
            self._parked.clear()

    def retry_parked(self) -> int:
        """Queue again the runs that waited for labels since their change point (each evaluation)."""
        with self._lock:
            parked, self._parked = self._parked, {}
            for key, value in parked.items():
                self._waiting.setdefault(key, value)
            return len(parked)

    def drain(self) -> list[Outcome]:
        """Run every waiting series, one at a time, while this replica may write."""
        done: list[Outcome] = []
        while True:
            with self._lock:
                if not self._waiting:
                    return done
                (model, segment), (trigger, since) = next(iter(self._waiting.items()))
            if not self._may_write():
                log.warning(
                    "lease lost: queued recalibrations dropped", extra={"waiting": len(self._waiting)}
                )
                self.clear()
                return done
            outcome = None
            try:
                outcome = self._runner.run(model, segment, trigger, since=since)
                done.append(outcome)
            finally:
                with self._lock:
                    self._waiting.pop((model, segment), None)
                    if outcome is not None and outcome.outcome == RecalibrationOutcome.WAITING:
                        self._parked[(model, segment)] = (trigger, since)
