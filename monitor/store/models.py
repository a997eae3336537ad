"""The registry of tracked models: what ``limits.max_models`` is counted against."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.schema import models

__all__ = ["known_models", "register_models"]


def known_models(conn: Connection) -> set[str]:
    return {model for (model,) in conn.execute(select(models.c.model))}


def register_models(conn: Connection, names: Iterable[str], now: float) -> None:
    """Record new models (already-known ones are left as they are), in the caller's transaction."""
    rows = [{"model": name, "created_at": now} for name in names]
    if rows:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(models).on_conflict_do_nothing(index_elements=["model"]), rows)
