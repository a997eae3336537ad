"""Cross-replica coordination in the database: the scheduler's leader lease and the shared snapshot."""

from __future__ import annotations

from sqlalchemy import Connection, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from monitor.store.schema import leases, snapshots

__all__ = [
    "holds_lease",
    "load_snapshot",
    "release_lease",
    "save_snapshot",
    "try_acquire_lease",
]


def try_acquire_lease(conn: Connection, name: str, holder: str, ttl: float, now: float) -> bool:
    """Take or renew the lease; True when ``holder`` holds it until ``now + ttl``.

    Renewal and takeover are one conditional UPDATE (ours, or expired), so two replicas can never
    both succeed; the first ever acquisition is an INSERT that loses cleanly on a race.
    """
    renewed = conn.execute(
        update(leases)
        .where(and_(leases.c.name == name, or_(leases.c.holder == holder, leases.c.expires_at < now)))
        .values(holder=holder, expires_at=now + ttl)
    ).rowcount
    if renewed:
        return True
    if conn.execute(select(leases.c.name).where(leases.c.name == name)).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(leases).values(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False
    return True


def release_lease(conn: Connection, name: str, holder: str) -> None:
    conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


def save_snapshot(conn: Connection, name: str, created_at: float, body: str) -> None:
    updated = conn.execute(
        update(snapshots).where(snapshots.c.name == name).values(created_at=created_at, body=body)
    ).rowcount
    if not updated:
        conn.execute(insert(snapshots).values(name=name, created_at=created_at, body=body))


def load_snapshot(conn: Connection, name: str, newer_than: float | None = None) -> tuple[float, str] | None:
    query = select(snapshots.c.created_at, snapshots.c.body).where(snapshots.c.name == name)
    if newer_than is not None:
        query = query.where(snapshots.c.created_at > newer_than)
    row = conn.execute(query).first()
    return (row.created_at, row.body) if row is not None else None


def holds_lease(conn: Connection, name: str, holder: str, now: float) -> bool:
    """Whether ``holder`` still holds the lease at ``now`` (checked before a leader writes)."""
    row = conn.execute(
        select(leases.c.name).where(
            leases.c.name == name, leases.c.holder == holder, leases.c.expires_at >= now
        )
    ).first()
    return row is not None
