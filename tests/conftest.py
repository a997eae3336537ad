"""Shared fixtures: a real throwaway PostgreSQL (or CALMON_TEST_DATABASE_URL), SQLite files, app clients."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.collector.api import create_app
from monitor.config import Settings, load_settings
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from tests.support import pgcluster

REQUIRE_SERVICES = os.environ.get("CALMON_REQUIRE_SERVICES") == "1"


def missing_service(message: str) -> None:
    """Skip (developer machine) or fail (CI: CALMON_REQUIRE_SERVICES=1) when a real service is absent."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {message}")
    pytest.skip(message)


def require_binary(name: str, package: str) -> str:
    """The path of a real tool the test needs, or skip/fail naming the Debian package that brings it."""
    found = shutil.which(name)
    if found is None:
        missing_service(f"{name} not found; install Debian's {package!r} package (apt-get install {package})")
    assert found is not None
    return found


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
def make_settings(db_url: str) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return load_settings(None, database_url=db_url, **overrides)

    return build


@pytest.fixture
def make_client(
    engine: Engine, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(settings: Settings | None = None, **kwargs: Any) -> TestClient:
        client = TestClient(create_app(settings or make_settings(), engine, **kwargs))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
