"""The append-only event log (drift_detected, recalibration_* ...): write and page through it."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select

from monitor.store.schema import events
from monitor.vocabulary import EventKind

__all__ = [
    "CALIBRATOR_CHANGES",
    "append_event",
    "calibrator_changes",
    "latest_event",
    "latest_per_model",
    "list_events",
]


def append_event(
    conn: Connection,
    kind: str,
    ts: float,
    payload: dict[str, Any],
    model: str | None = None,
    segment: str | None = None,
    calibrator_id: int | None = None,
) -> int:
    result = conn.execute(
        insert(events)
        .values(
            kind=kind,
            ts=ts,
            model=model,
            segment=segment,
            calibrator_id=calibrator_id,
            payload=orjson.dumps(payload).decode(),
        )
        .returning(events.c.id)
    )
    return int(result.scalar_one())


def list_events(
    conn: Connection,
    model: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first; page with ``before_id`` (the smallest id of the previous page)."""
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if model is not None:
        query = query.where(events.c.model == model)
    if kind is not None:
        query = query.where(events.c.kind == kind)
    if before_id is not None:
        query = query.where(events.c.id < before_id)
    return [_event(r) for r in conn.execute(query)]


def _event(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "ts": r.ts,
        "kind": r.kind,
        "model": r.model,
        "segment": r.segment,
        "calibrator_id": r.calibrator_id,
        "payload": orjson.loads(r.payload),
    }


def latest_per_model(conn: Connection) -> dict[str, dict[str, Any]]:
    """Each model's newest event (the overview's "latest decision" column)."""
    newest = select(func.max(events.c.id)).where(events.c.model.is_not(None)).group_by(events.c.model)
    return {r.model: _event(r) for r in conn.execute(select(events).where(events.c.id.in_(newest)))}


def latest_event(conn: Connection, model: str, segment: str) -> dict[str, Any] | None:
    """The newest event of one series (kind and payload), or None."""
    query = (
        select(events.c.kind, events.c.payload)
        .where(events.c.model == model, events.c.segment == segment)
        .order_by(events.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else {"kind": row.kind, "payload": orjson.loads(row.payload)}


CALIBRATOR_CHANGES = (EventKind.CALIBRATOR_PROMOTED, EventKind.CALIBRATOR_ROLLED_BACK)


def calibrator_changes(conn: Connection) -> dict[tuple[str, str], float]:
    """When the calibrator serving each (model, segment) last changed (promotion or rollback)."""
    query = (
        select(events.c.model, events.c.segment, func.max(events.c.ts))
        .where(events.c.kind.in_(CALIBRATOR_CHANGES), events.c.model.is_not(None))
        .group_by(events.c.model, events.c.segment)
    )
    return {(model, segment): float(ts) for model, segment, ts in conn.execute(query)}
