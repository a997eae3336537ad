"""Wires one daemon together: settings -> engine -> migrations -> API -> uvicorn.

The scheduler and the exporter join here in later issues; nothing imports this but the CLI.
"""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from monitor.collector.api import create_app
from monitor.config import Settings, mask_url
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade

log = logging.getLogger("calmon.app")


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
    try:
        uvicorn.Server(config).run()
    finally:
        engine.dispose()
        log.info("calmon stopped")
