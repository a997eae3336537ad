"""The scheduler's leader lease: which replica runs the jobs, and whether it may still write.

Taken and renewed in the database (``store.coordination``) every TTL/3; a replica that cannot
renew stops acting as leader at once. ``still_held`` asks the database again right before a leader
writes what a long tick or a recalibration decided, so a tick that outlived its lease (a pause, a
partition) cannot write events or start a recalibration alongside the new leader.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine

from monitor.store.coordination import holds_lease, release_lease, try_acquire_lease
from monitor.store.engine import READ_ONLY

__all__ = ["LeaderLease"]

log = logging.getLogger("calmon.scheduler")


class LeaderLease:
    def __init__(
        self,
        engine: Engine,
        instance_id: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        name: str = "scheduler",
    ):
        self.engine = engine
        self.instance_id = instance_id
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.name = name
        self.is_leader = False
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(leader)`` whenever this replica gains or loses the lease."""
        self._listeners.append(listener)

    def renew(self) -> bool:
        """Take or renew the lease; a database error means we cannot prove we hold it: not leader."""
        try:
            with self.engine.begin() as conn:
                leader = try_acquire_lease(conn, self.name, self.instance_id, self.ttl_seconds, self.clock())
        except Exception:
            self._set(False)
            raise
        self._set(leader)
        return leader

    def still_held(self) -> bool:
        if not self.is_leader:
            return False
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            held = holds_lease(conn, self.name, self.instance_id, self.clock())
            conn.rollback()
        if not held:
            self._set(False)
        return held

    def release(self) -> None:
        if self.is_leader:
            try:
                with self.engine.begin() as conn:
                    release_lease(conn, self.name, self.instance_id)
            except Exception:
                log.exception("could not release the scheduler lease; it expires by itself")
        self._set(False)

    def _set(self, leader: bool) -> None:
        changed = leader != self.is_leader
        self.is_leader = leader
        if changed:
            log.info("scheduler leadership changed", extra={"instance": self.instance_id, "leader": leader})
            for listener in self._listeners:
                listener(leader)
