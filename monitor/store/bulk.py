"""What ``calmon import`` adds to the API's writes: parked labels joined after a chunk lands.

Its predictions go in through ``store.insertion.insert_columns`` (the API's statements, without the
per-record answer an import does not need). In the caller's transaction, like every store write.
"""

from __future__ import annotations

from sqlalchemy import Connection

from monitor.store.ingest import _any_pending, reconcile_pending

__all__ = ["join_parked"]


def join_parked(conn: Connection, models: set[str]) -> int:
    """Apply feedback parked for predictions that have now landed (as the API does inline)."""
    if not _any_pending(conn, models):
        return 0
    joined = 0
    while True:
        done = reconcile_pending(conn)
        joined += done
        if done < 10_000:
            return joined
