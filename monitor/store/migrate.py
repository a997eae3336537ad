"""Apply Alembic migrations programmatically (``calmon db upgrade`` and ``calmon serve`` start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

__all__ = [
    "MIGRATIONS",
    "SchemaError",
    "current_revision",
    "head_revision",
    "upgrade",
]


MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


class SchemaError(RuntimeError):
    """The database's schema is newer than this release knows (a rollback of calmon past a migration)."""


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Concurrent replicas serialise on PostgreSQL's advisory lock."""
    cfg = _config()
    known = {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7212401)")  # 'calmon' migrations lock
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in known:
            raise SchemaError(
                f"the database schema is at revision {current!r}, which this calmon release does not know "
                f"(its newest is {head_revision()!r}): run the release that migrated it, or restore a backup "
                "taken before that upgrade (docs/operations.md)"
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()
