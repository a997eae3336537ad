"""Wires one daemon together: settings -> engine -> migrations -> API + scheduler + exporter -> uvicorn.

Nothing imports this but the CLI (and tests that start a daemon in-process).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from monitor.collector.api import create_app
from monitor.config import Settings, mask_url
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.exporter import BinnedCounters, Exposition
from monitor.scheduler import Scheduler
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from monitor.telemetry import ServiceMetrics

log = logging.getLogger("calmon.app")


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


def build(settings: Settings) -> Daemon:
    """Migrated engine, the API, the scheduler and the exporter, sharing one registry and snapshot."""
    engine = create_store_engine(settings.url(), settings.database)
    upgrade(engine)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    holder = SnapshotHolder()
    caps = {m: c.max_segments for m, c in settings.models.items() if c.max_segments}
    binned = BinnedCounters(settings.evaluation.ece_bins, caps, settings.evaluation.max_segments)
    exposition = Exposition(registry, holder, binned)
    scheduler = Scheduler(engine, settings, holder, metrics, binned, published=exposition.refresh)
    app = create_app(
        settings,
        engine,
        registry=registry,
        metrics=metrics,
        snapshots=holder,
        render_metrics=exposition.render,
    )
    return Daemon(engine, app, scheduler, registry)


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
    if settings.scheduler.enabled:
        daemon.scheduler.start()
    try:
        _Server(config).run()
    finally:
        if settings.scheduler.enabled:
            daemon.scheduler.shutdown()
        daemon.engine.dispose()
        log.info("calmon stopped")
