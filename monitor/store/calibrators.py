"""The calibrator registry: versions per (model, segment), one active, activation and rollback.

Segment ``*`` holds the model-wide calibrator that serves every segment without one of its own.
Activation and rollback retire the current version and activate another in one transaction; the
partial unique index on active rows makes a second active version impossible, even across replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, func, insert, select, update

from monitor.calibration.calibrators import Calibrator, from_dict
from monitor.store.events import append_event
from monitor.store.schema import calibrators
from monitor.vocabulary import EventKind

__all__ = [
    "CalibratorRecord",
    "activate",
    "active",
    "all_active",
    "create",
    "get",
    "list_all",
    "rollback",
]


@dataclass(frozen=True)
class CalibratorRecord:
    id: int
    model: str
    segment: str
    version: int
    method: str
    params: dict[str, Any]
    status: str
    reason: str
    metrics: dict[str, Any]
    fit_start: float | None
    fit_end: float | None
    created_at: float
    activated_at: float | None
    replaced_id: int | None  # what was active when this was activated (0: nothing; None: unknown)

    def calibrator(self) -> Calibrator:
        return from_dict({"method": self.method, "params": self.params})

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "version": str(self.version)}


def _record(row: Any) -> CalibratorRecord:
    return CalibratorRecord(
        row.id,
        row.model,
        row.segment,
        row.version,
        row.method,
        orjson.loads(row.params),
        row.status,
        row.reason,
        orjson.loads(row.metrics),
        row.fit_start,
        row.fit_end,
        row.created_at,
        row.activated_at,
        row.replaced_id,
    )


def create(
    conn: Connection,
    model: str,
    segment: str,
    calibrator: Calibrator,
    now: float,
    status: str = "candidate",
    reason: str = "",
    metrics: dict[str, Any] | None = None,
    fit_start: float | None = None,
    fit_end: float | None = None,
) -> CalibratorRecord:
    """A new version (next number for the series) in ``candidate`` or ``rejected`` state."""
    if status not in ("candidate", "rejected"):
        raise ValueError("new calibrators start as 'candidate' or 'rejected'; activate() promotes")
    latest = conn.execute(
        select(func.max(calibrators.c.version)).where(
            calibrators.c.model == model, calibrators.c.segment == segment
        )
    ).scalar()
    new_id = conn.execute(
        insert(calibrators)
        .values(
            model=model,
            segment=segment,
            version=(latest or 0) + 1,
            method=calibrator.method,
            params=orjson.dumps(calibrator.params()).decode(),
            status=status,
            reason=reason,
            metrics=orjson.dumps(metrics or {}).decode(),
            fit_start=fit_start,
            fit_end=fit_end,
            created_at=now,
        )
        .returning(calibrators.c.id)
    ).scalar_one()
    found = get(conn, int(new_id))
    assert found is not None
    return found


def get(conn: Connection, calibrator_id: int) -> CalibratorRecord | None:
    row = conn.execute(select(calibrators).where(calibrators.c.id == calibrator_id)).first()
    return _record(row) if row is not None else None


def active(conn: Connection, model: str, segment: str) -> CalibratorRecord | None:
    row = conn.execute(
        select(calibrators).where(
            calibrators.c.model == model, calibrators.c.segment == segment, calibrators.c.status == "active"
        )
    ).first()
    return _record(row) if row is not None else None


def list_all(conn: Connection, model: str | None = None, limit: int = 500) -> list[CalibratorRecord]:
    query = select(calibrators).order_by(
        calibrators.c.model, calibrators.c.segment, calibrators.c.version.desc()
    )
    if model is not None:
        query = query.where(calibrators.c.model == model)
    return [_record(r) for r in conn.execute(query.limit(limit))]


def all_active(conn: Connection) -> list[CalibratorRecord]:
    return [_record(r) for r in conn.execute(select(calibrators).where(calibrators.c.status == "active"))]


def activate(
    conn: Connection, calibrator_id: int, now: float, reason: str, details: dict[str, Any] | None = None
) -> CalibratorRecord | None:
    """Make ``calibrator_id`` the active version of its series (the previous active one is retired)
    and record the ``calibrator_promoted`` event, with ``details`` in its payload, in the caller's
    transaction: every path that promotes (job, CLI, API) writes the same audit trail."""
    target = get(conn, calibrator_id)
    if target is None:
        raise LookupError(f"no calibrator {calibrator_id}")
    previous = active(conn, target.model, target.segment)
    if previous is not None and previous.id != target.id:
        conn.execute(update(calibrators).where(calibrators.c.id == previous.id).values(status="retired"))
    conn.execute(
        update(calibrators)
        .where(calibrators.c.id == target.id)
        .values(status="active", activated_at=now, reason=reason, replaced_id=previous.id if previous else 0)
    )
    payload = {**(details or {}), "version": str(target.version), "method": target.method, "reason": reason}
    append_event(conn, EventKind.CALIBRATOR_PROMOTED, now, payload, target.model, target.segment, target.id)
    return previous


def _replaced(conn: Connection, current: CalibratorRecord) -> CalibratorRecord | None:
    """The version ``current`` replaced; for versions activated before migration 0005 (unknown),
    the newest earlier version that was ever active."""
    if current.replaced_id is not None:
        return get(conn, current.replaced_id) if current.replaced_id else None
    row = conn.execute(
        select(calibrators)
        .where(
            calibrators.c.model == current.model,
            calibrators.c.segment == current.segment,
            calibrators.c.version < current.version,
            calibrators.c.activated_at.is_not(None),
        )
        .order_by(calibrators.c.version.desc())
        .limit(1)
    ).first()
    return _record(row) if row is not None else None


def rollback(
    conn: Connection, calibrator_id: int, now: float, details: dict[str, Any] | None = None
) -> tuple[CalibratorRecord, CalibratorRecord | None]:
    """Retire the active ``calibrator_id``, re-activate the version it replaced (what served before
    it), and record a ``calibrator_rolled_back`` event, all in the caller's transaction.

    Returns (rolled back, restored); restored is None when it replaced nothing, in which case the
    series falls back to the model-wide calibrator, then to the identity. (v1, v2, rollback -> v1,
    v3, rollback -> v1 again: v3 replaced v1, whatever v2 once was.)
    """
    current = get(conn, calibrator_id)
    if current is None:
        raise LookupError(f"no calibrator {calibrator_id}")
    if current.status != "active":
        raise ValueError(f"calibrator {calibrator_id} is {current.status}, not active")
    earlier = _replaced(conn, current)
    conn.execute(update(calibrators).where(calibrators.c.id == current.id).values(status="retired"))
    restored = None
    if earlier is not None:
        conn.execute(
            update(calibrators)
            .where(calibrators.c.id == earlier.id)
            .values(
                status="active", activated_at=now, reason=f"restored by rollback of version {current.version}"
            )
        )
        restored = get(conn, earlier.id)
    rolled = get(conn, current.id)
    assert rolled is not None
    payload = {"rolled_back": rolled.as_dict(), "restored": restored.as_dict() if restored else None}
    payload.update(details or {})
    append_event(
        conn, EventKind.CALIBRATOR_ROLLED_BACK, now, payload, rolled.model, rolled.segment, rolled.id
    )
    return rolled, restored
