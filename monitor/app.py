"""Wires one daemon together: settings -> engine -> migrations -> API + scheduler + exporter -> uvicorn.

Nothing imports this but the CLI (and tests that start a daemon in-process).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

import monitor.charts as charts
from monitor.collector.api import create_app
from monitor.collector.serving import RegistryScorer
from monitor.config import Settings, mask_url
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.evaluation.tick import EvaluationTick
from monitor.exporter import Exposition
from monitor.lease import LeaderLease
from monitor.notify import Notifier
from monitor.recalibration.service import RecalibrationQueue, Recalibrator
from monitor.scheduler import Scheduler, SnapshotPublisher, default_instance_id
from monitor.store.engine import UNAVAILABLE, create_store_engine, unavailable_reason
from monitor.store.migrate import upgrade
from monitor.telemetry import BinnedCounters, ServiceMetrics
from monitor.web import pages as status_pages

__all__ = ["Daemon", "StartupError", "build", "serve", "settle_heap"]

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
    """Every part of one daemon, wired; tests drive these same parts (with their own clock)."""

    engine: Engine
    app: FastAPI
    scheduler: Scheduler
    registry: CollectorRegistry
    metrics: ServiceMetrics
    holder: SnapshotHolder
    exposition: Exposition
    binned: BinnedCounters
    scorer: RegistryScorer
    recalibrator: Recalibrator
    queue: RecalibrationQueue
    notifier: Notifier


def build(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    instance_id: str | None = None,
    engine: Engine | None = None,
    render_exposition: bool = True,
) -> Daemon:
    """The migrated engine, the API, the scheduler, the exporter and the notifier, sharing one
    registry, one snapshot and one calibrator table. ``engine`` reuses an existing (migrated) one;
    ``render_exposition=False`` (``calmon replay``) skips rendering /metrics after each evaluation."""
    if engine is None:
        engine = create_store_engine(settings.url(), settings.database)
        upgrade(engine)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    holder = SnapshotHolder()
    binned = BinnedCounters(settings.evaluation.ece_bins)
    exposition = Exposition(
        registry, holder, binned, lambda model, segment: settings.drift_for(model, segment).accuracy_floor
    )
    scorer = RegistryScorer()
    scorer.refresh(engine, clock())  # serve the active calibrators from the first request on
    notifier = Notifier(settings.notifications, metrics)
    recalibrator = Recalibrator(
        engine, settings, metrics, lambda: scorer.refresh(engine, clock()), notifier.notify, clock
    )
    instance = instance_id or settings.scheduler.instance_id or default_instance_id()
    lease = LeaderLease(engine, instance, settings.scheduler.lease_ttl_seconds, clock)
    queue = RecalibrationQueue(recalibrator, may_write=lease.still_held)
    publisher = SnapshotPublisher(holder, metrics, exposition.refresh if render_exposition else lambda: None)
    tick = EvaluationTick(
        engine,
        settings,
        observers=[binned.add],
        publish=publisher,
        may_write=lease.still_held,
        submit=queue.submit,
        notify=notifier.notify,
        clock=clock,
        on_calibrator_change=lambda: scorer.refresh(engine, clock()),
    )
    scheduler = Scheduler(
        engine,
        settings,
        metrics,
        tick,
        publisher,
        lease,
        clock=clock,
        queue=queue,
        refresh_calibrators=lambda: scorer.refresh(engine, clock()),
    )
    app = create_app(
        settings,
        engine,
        scorer=scorer,
        clock=clock,
        registry=registry,
        metrics=metrics,
        snapshots=holder,
        render_metrics=exposition.render,
        recalibrator=recalibrator,
        notify=notifier.notify,
    )
    status_pages.install(app)  # the status page: /, /models/{model}, /reports/{id}
    return Daemon(
        engine,
        app,
        scheduler,
        registry,
        metrics,
        holder,
        exposition,
        binned,
        scorer,
        recalibrator,
        queue,
        notifier,
    )


class StartupError(RuntimeError):
    """calmon cannot start; the message is one line naming the setting to fix."""


def _bind(settings: Settings) -> socket.socket:
    """The listening socket, taken before anything is written (migrations, the lease)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port} (host/port, --host/--port): {exc.strerror}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _build_or_explain(settings: Settings) -> Daemon:
    try:
        return build(settings)
    except UNAVAILABLE as exc:
        reason = unavailable_reason(exc)
        raise StartupError(
            f"cannot reach the database {mask_url(settings.url())} (database_url, --database-url): {reason}"
        ) from None


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; uvicorn stops accepting, drains in-flight requests, then returns.

    Shutdown is bounded by ``shutdown_grace_seconds`` even when a job is stuck on a frozen database:
    what a stuck job holds is an uncommitted transaction (a 2xx means committed), so the process
    leaves without it rather than hang.
    """
    sock = _bind(settings)
    try:
        daemon = _build_or_explain(settings)
    except BaseException:
        sock.close()
        raise
    log.info(
        "calmon starting",
        extra={"host": settings.host, "port": settings.port, "database": mask_url(settings.url())},
    )
    config = uvicorn.Config(
        daemon.app,
        log_config=None,  # our logging configuration stays in charge
        access_log=settings.logging.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
        root_path=settings.root_path,
    )
    settle_heap()
    daemon.notifier.start()
    if settings.scheduler.enabled:
        daemon.scheduler.start()
    try:
        _Server(config).run(sockets=[sock])
    finally:
        _stop(daemon, settings)


def settle_heap() -> None:
    """Put what start-up leaves alive (modules, schemas, matplotlib's fonts: millions of objects) out
    of the garbage collector's reach. Every full collection re-walks the whole tracked heap; measured
    in ``benchmarks/pages.py``, that was a 100-230 ms pause landing on whichever request triggered
    it. Fonts are loaded first (one small chart), so they are frozen too."""
    charts.warm()
    gc.collect()
    gc.freeze()


def _stop(daemon: Daemon, settings: Settings) -> None:
    stopped = threading.Event()

    def stop_parts() -> None:
        if settings.scheduler.enabled:
            daemon.scheduler.shutdown()
        daemon.notifier.stop()
        daemon.engine.dispose()
        stopped.set()

    threading.Thread(target=stop_parts, name="calmon-stop", daemon=True).start()
    if stopped.wait(settings.shutdown_grace_seconds):
        log.info("calmon stopped")
        return
    log.error(
        "calmon stopped with a job still waiting on the database (its transaction is rolled back)",
        extra={"waited_seconds": settings.shutdown_grace_seconds},
    )
    logging.shutdown()
    os._exit(0)  # the stuck worker thread would keep the interpreter from exiting
