"""Engine construction for the two supported backends.

SQLite: WAL so readers never block the writer, a busy timeout so concurrent writers queue instead of
failing, and ``BEGIN IMMEDIATE`` for every transaction so a read-then-write transaction can never hit
SQLITE_BUSY on lock upgrade (which a busy timeout does not cover).
PostgreSQL: psycopg 3, pre-ping so a restarted server is noticed and the pool heals by itself.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import ConnectionPoolEntry

from monitor.config import DatabaseConfig

__all__ = ["READ_ONLY", "UNAVAILABLE", "create_store_engine", "ping", "unavailable_reason"]

READ_ONLY = {"calmon_read_only": True}

# What a database that is down, stalled or cancelling statements raises: SQLAlchemy's wrapped
# errors, an exhausted pool, and the drivers' own, which the store meets where it works through
# the driver's cursor (``store.ingest``, ``store.folding``: SQLAlchemy does not wrap those). A
# statement PostgreSQL cancels (its statement timeout) is a ``psycopg.OperationalError``.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
)


def unavailable_reason(exc: BaseException) -> str:
    """The first line of the driver's message for one of ``UNAVAILABLE`` (SQLAlchemy's wrapper
    carries it as ``orig``): what the one-line startup and command errors print."""
    cause = getattr(exc, "orig", None)
    lines = str(cause if cause is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def ping(engine: Engine) -> None:
    """One round trip to the database; raises the driver's error when it is unreachable."""
    with engine.connect().execution_options(**READ_ONLY) as conn:
        conn.execute(text("SELECT 1"))


def create_store_engine(url: str, database: DatabaseConfig | None = None) -> Engine:
    """An Engine configured for calmon's access pattern (batch writes, short reads)."""
    cfg = database or DatabaseConfig()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, cfg)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=cfg.pool_size,
            max_overflow=cfg.max_overflow,
            pool_timeout=cfg.pool_timeout_seconds,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": cfg.connect_timeout_seconds,
                "application_name": "calmon",
                # A statement waiting on locks or a runaway query ends server-side; a *frozen*
                # server is bounded by the API's request deadline instead (collector.api).
                "options": f"-c statement_timeout={int(cfg.statement_timeout_seconds * 1000)}",
            },
        )
    raise ValueError(f"unsupported database backend: {parsed.get_backend_name()}")


def _sqlite_engine(url: str, cfg: DatabaseConfig) -> Engine:
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=cfg.pool_timeout_seconds,
        connect_args={"timeout": cfg.sqlite_busy_timeout_ms / 1000.0, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, record: ConnectionPoolEntry) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE below is what runs.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not _is_memory(url):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={cfg.sqlite_synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(cfg.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Read-only work (marked with READ_ONLY) takes a deferred snapshot and never blocks writers.
        read_only = conn.get_execution_options().get("calmon_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _is_memory(url: str) -> bool:
    database = make_url(url).database
    return database in (None, "", ":memory:") or "mode=memory" in url
