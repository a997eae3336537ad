"""A rebuild is an explicit offline recomputation: PostgreSQL's statement timeout (which bounds every
API statement) must not cut it short, or ``calmon rebuild-aggregates`` fails on a large store."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from monitor.config import DatabaseConfig
from monitor.store.aggregates import rebuild
from monitor.store.engine import create_store_engine
from monitor.store.insertion import PG_INSERT
from monitor.store.migrate import upgrade
from monitor.store.schema import fold_queue, sketch_bins


@pytest.mark.postgres
def test_a_rebuild_outlasts_the_statement_timeout(pg_url: str) -> None:
    engine = create_store_engine(pg_url, DatabaseConfig(statement_timeout_seconds=0.05))
    upgrade(engine)
    n = 200_000
    columns = (
        [f"m{i % 3}" for i in range(n)], [f"p{i}" for i in range(n)], ["default"] * n,
        [1_800_000_000.0 + i for i in range(n)], ["confidence"] * n, [0.7] * n, [None] * n, [None] * n,
        [0.7] * n, ["identity"] * n, [1_800_000_000.0] * n,
    )  # fmt: skip
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")  # the set-up only
        conn.exec_driver_sql(PG_INSERT, columns)
    # Statements of that size under the timeout fail: the test can fail.
    with engine.begin() as conn, pytest.raises(Exception, match="statement timeout"):
        conn.exec_driver_sql("UPDATE predictions SET labelled_at = 1 WHERE pk > 0")
    with engine.begin() as conn:
        assert rebuild(conn, 3600, 120, hour_bins=15) == n
    with engine.connect() as conn:
        conn.exec_driver_sql("SET statement_timeout = 0")  # the checks scan 200k rows and their dead versions
        counted = conn.execute(select(func.sum(sketch_bins.c.n)).where(sketch_bins.c.bin < 120)).scalar()
        queued = conn.execute(select(func.count()).select_from(fold_queue)).scalar()
    assert queued == 0 and counted == 2 * n  # each prediction under its raw and its calibrated score
    engine.dispose()
