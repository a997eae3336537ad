"""Alembic environment: always driven programmatically by monitor.store.migrate with a live connection."""

from __future__ import annotations

from alembic import context

from monitor.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `calmon db upgrade` (monitor.store.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
