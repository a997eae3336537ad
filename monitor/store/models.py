"""The registry of tracked models: what ``limits.max_models`` is counted against."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.schema import models

__all__ = ["first_seen", "known_models", "lower_first_seen", "register_models"]


def known_models(conn: Connection) -> set[str]:
    return {model for (model,) in conn.execute(select(models.c.model))}


def register_models(conn: Connection, first_seen: Mapping[str, float]) -> None:
    """Record new models with when they were first seen (the earliest prediction time of the batch
    that brought them: the status page's history starts there); already-known ones are left as
    they are. In the caller's transaction."""
    rows = [{"model": name, "created_at": ts} for name, ts in first_seen.items()]
    if rows:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(models).on_conflict_do_nothing(index_elements=["model"]), rows)


def first_seen(conn: Connection, model: str) -> float | None:
    """When the model was first seen (its ``created_at``): cheap, unlike a min over its buckets."""
    found = conn.execute(select(models.c.created_at).where(models.c.model == model)).scalar()
    return None if found is None else float(found)


def lower_first_seen(conn: Connection, first_seen: Mapping[str, float]) -> None:
    """Move a model's first-seen time back to an earlier prediction (an imported history starts
    before the model was first seen live). In the caller's transaction."""
    for model, ts in first_seen.items():
        conn.execute(
            update(models).where(models.c.model == model, models.c.created_at > ts).values(created_at=ts)
        )
