"""Shared fixtures: a real throwaway PostgreSQL (or CALMON_TEST_DATABASE_URL), SQLite files, app clients."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.collector.api import create_app
from monitor.config import Settings, load_settings
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from tests.support import pgcluster
from tests.support.services import missing_service


class MakeSettings(Protocol):
    def __call__(self, **overrides: Any) -> Settings: ...


class MakeClient(Protocol):
    def __call__(self, settings: Settings | None = None, **kwargs: Any) -> TestClient: ...


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``calmon.cli.main`` installs a root handler on the stream of the moment (pytest's captured
    stderr); left in place, threads of later tests would log to a closed file. Put it all back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "apscheduler")
        for logger in [logging.getLogger(name)]
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, saved_level, propagate) in loggers.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = saved
        logger.setLevel(saved_level)
        logger.propagate = propagate


class PgServer:
    """Creates one fresh database per test from a migrated template (fast: a file copy)."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.template = f"calmon_tpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = [self.template]
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.template}"'))
        engine = create_store_engine(self.url_for(self.template))
        upgrade(engine)
        engine.dispose()

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def new_database(self) -> str:
        name = f"calmon_t_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        self.created.append(name)
        return self.url_for(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("CALMON_TEST_DATABASE_URL")
    cluster = None
    if external:
        admin_url = external
    else:
        try:
            cluster = pgcluster.start_cluster()
        except RuntimeError as exc:
            missing_service(str(exc))
        assert cluster is not None
        admin_url = cluster.url()
    server = PgServer(admin_url)
    try:
        yield server
    finally:
        server.close()
        if cluster is not None:
            cluster.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.new_database()
    yield url
    pg_server.drop(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'calmon.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calmon.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_store_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def make_settings(db_url: str) -> MakeSettings:
    def build(**overrides: Any) -> Settings:
        return load_settings(None, database_url=db_url, **overrides)

    return build


@pytest.fixture
def make_client(engine: Engine, make_settings: MakeSettings) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def build(settings: Settings | None = None, **kwargs: Any) -> TestClient:
        client = TestClient(create_app(settings or make_settings(), engine, **kwargs))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()
