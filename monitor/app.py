"""Wires one daemon together: settings -> engine -> migrations -> API -> uvicorn.

The scheduler and the exporter join here in later issues; nothing imports this but the CLI.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from monitor.collector.api import create_app
from monitor.config import Settings, mask_url
from monitor.store.engine import create_store_engine
from monitor.store.ingest import reconcile_pending
from monitor.store.migrate import upgrade

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


class PendingReconciler:
    """Periodically joins parked feedback whose prediction landed concurrently on another replica.

    Runs in a background thread until ``stop``; failures are logged and retried next round. (The
    scheduler issue moves this into the leader's job set.)
    """

    def __init__(self, engine: Engine, interval_seconds: float = 30.0):
        self._engine = engine
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="calmon-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> int:
        with self._engine.begin() as conn:
            return reconcile_pending(conn)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                joined = self.run_once()
                if joined:
                    log.info("joined parked feedback", extra={"joined": joined})
            except Exception:
                log.exception("pending-feedback reconciliation failed; retrying next round")


def build(settings: Settings) -> tuple[Engine, FastAPI]:
    """Migrated engine and the application serving it."""
    engine = create_store_engine(settings.url(), settings.database)
    upgrade(engine)
    return engine, create_app(settings, engine)


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; uvicorn stops accepting, drains in-flight requests, then returns."""
    engine, app = build(settings)
    log.info(
        "calmon starting",
        extra={"host": settings.host, "port": settings.port, "database": mask_url(settings.url())},
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our logging configuration stays in charge
        access_log=settings.logging.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
    )
    reconciler = PendingReconciler(engine)
    reconciler.start()
    try:
        _Server(config).run()
    finally:
        reconciler.stop()
        engine.dispose()
        log.info("calmon stopped")
