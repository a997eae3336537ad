"""Wires one daemon together: settings -> engine -> migrations -> API + scheduler + exporter -> uvicorn.

Nothing imports this but the CLI (and tests that start a daemon in-process).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from monitor.collector.api import create_app
from monitor.collector.serving import RegistryScorer
from monitor.config import Settings, mask_url
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.exporter import BinnedCounters, Exposition
from monitor.notify import Notifier
from monitor.recalibration.job import Outcome, load_report, recalibrate
from monitor.recalibration.report import svg as reliability_svg
from monitor.scheduler import Scheduler
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from monitor.telemetry import ServiceMetrics

log = logging.getLogger("calmon.app")
OUTCOME_EVENTS = {"promoted": "calibrator_promoted", "rejected": "calibrator_rejected"}


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process dies "by signal" and the
    code after ``run()`` never runs. A drained shutdown is a success: handle the signals, don't re-raise."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


@dataclass
class Daemon:
    engine: Engine
    app: FastAPI
    scheduler: Scheduler
    registry: CollectorRegistry
    notifier: Notifier


def build(settings: Settings) -> Daemon:
    """Migrated engine, the API, the scheduler, the exporter and the notifier, sharing one registry,
    one snapshot and one calibrator table."""
    engine = create_store_engine(settings.url(), settings.database)
    upgrade(engine)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    holder = SnapshotHolder()
    caps = {m: c.max_segments for m, c in settings.models.items() if c.max_segments}
    binned = BinnedCounters(settings.evaluation.ece_bins, caps, settings.evaluation.max_segments)
    exposition = Exposition(registry, holder, binned)
    scorer = RegistryScorer()
    scorer.refresh(engine, time.time())  # serve the active calibrators from the first request on
    notifier = Notifier(settings.notifications, metrics)

    def run_recalibration(
        model: str, segment: str = "*", trigger: str = "manual", dry_run: bool = False
    ) -> Outcome:
        outcome = recalibrate(engine, settings, model, segment, trigger, dry_run)
        if not dry_run:
            metrics.recalibrations.labels(outcome.model, outcome.segment, outcome.outcome).inc()
            if outcome.outcome == "promoted":
                scorer.refresh(engine, time.time())  # this replica at once; the others at their refresh
            kind = OUTCOME_EVENTS.get(outcome.outcome, "recalibration_failed")
            payload = {"trigger": trigger, "reason": outcome.reason, "calibrator_id": outcome.calibrator_id}
            notifier.notify(kind, outcome.model, outcome.segment, payload)
        return outcome

    scheduler = Scheduler(
        engine,
        settings,
        holder,
        metrics,
        binned,
        published=exposition.refresh,
        scorer=scorer,
        recalibrate=run_recalibration,
        notify=notifier.notify,
    )
    app = create_app(
        settings,
        engine,
        scorer=scorer,
        registry=registry,
        metrics=metrics,
        snapshots=holder,
        render_metrics=exposition.render,
        recalibrate=run_recalibration,
        load_report=lambda calibrator_id: load_report(engine, calibrator_id),
        notify=notifier.notify,
        render_svg=reliability_svg,
    )
    return Daemon(engine, app, scheduler, registry, notifier)


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; uvicorn stops accepting, drains in-flight requests, then returns."""
    daemon = build(settings)
    log.info(
        "calmon starting",
        extra={"host": settings.host, "port": settings.port, "database": mask_url(settings.url())},
    )
    config = uvicorn.Config(
        daemon.app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our logging configuration stays in charge
        access_log=settings.logging.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
    )
    daemon.notifier.start()
    if settings.scheduler.enabled:
        daemon.scheduler.start()
    try:
        _Server(config).run()
    finally:
        if settings.scheduler.enabled:
            daemon.scheduler.shutdown()
        daemon.notifier.stop()
        daemon.engine.dispose()
        log.info("calmon stopped")
