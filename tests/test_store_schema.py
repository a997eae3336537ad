"""Migrations produce exactly the declared schema, on both backends, and constraints hold."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from monitor.store.migrate import current_revision, head_revision, upgrade
from monitor.store.schema import calibrators, metadata


def test_migrations_match_declared_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_at_most_one_active_calibrator_per_model_segment(engine: Engine) -> None:
    row = {"model": "m", "segment": "default", "method": "platt", "params": "{}", "created_at": 0.0}
    with engine.begin() as conn:
        conn.execute(
            insert(calibrators),
            [{**row, "version": 1, "status": "active"}, {**row, "version": 2, "status": "retired"}],
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(calibrators), [{**row, "version": 3, "status": "active"}])
    with engine.begin() as conn:  # another segment may have its own active one
        conn.execute(insert(calibrators), [{**row, "segment": "billing", "version": 1, "status": "active"}])
