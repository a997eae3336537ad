"""What one ingest commit writes must not grow with the store when clients send times out of order.

An index keyed on the client's ``ts`` took each batch's rows at random places in a B-tree as large
as the store: a 1000-row SQLite commit rewrote ~500 pages at 60k rows, and more as the store grew
(benchmarks/RESULTS.md, "Series index on arrival"). Pages written per commit are counted as WAL
frames, checkpointing off, so the figures are exact, not timings.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from monitor.store.engine import create_store_engine
from monitor.store.ingest import insert_predictions
from monitor.store.migrate import upgrade
from monitor.store.records import PredictionRow

PAGE = 4096
FRAME = PAGE + 24  # a WAL frame: its header and one page
BATCH = 1000


def batch(start: int, rng: random.Random) -> list[PredictionRow]:
    """1000 predictions with ids in arrival order and times anywhere in the last day."""
    row = PredictionRow("m", "", "", 0.0, "confidence", 0.7, None, None, 0.7, "identity")
    return [
        row._replace(prediction_id=f"p{i:08d}", segment=f"seg-{i % 5}", ts=1e9 - rng.random() * 86400)
        for i in range(start, start + BATCH)
    ]


def uncheckpointed(path: Path) -> Engine:
    engine = create_store_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _keep_wal(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

    return engine


def frames_per_commit(engine: Engine, wal: Path, start: int, rng: random.Random, commits: int = 5) -> float:
    before = wal.stat().st_size
    for k in range(commits):
        with engine.begin() as conn:
            insert_predictions(conn, batch(start + k * BATCH, rng), 1e9)
    return (wal.stat().st_size - before) / FRAME / commits


def test_an_ingest_commit_writes_as_many_pages_at_60k_rows_as_at_5k(tmp_path: Path) -> None:
    engine = uncheckpointed(tmp_path / "store.db")
    wal = tmp_path / "store.db-wal"
    rng = random.Random(3)
    try:
        for start in range(0, 5 * BATCH, BATCH):
            with engine.begin() as conn:
                insert_predictions(conn, batch(start, rng), 1e9)
        small = frames_per_commit(engine, wal, 5 * BATCH, rng)
        for start in range(10 * BATCH, 60 * BATCH, BATCH):
            with engine.begin() as conn:
                insert_predictions(conn, batch(start, rng), 1e9)
        large = frames_per_commit(engine, wal, 60 * BATCH, rng)
    finally:
        engine.dispose()
    # The rows themselves take ~45 pages (table, two indexes, work list); with the ts-keyed index
    # the same commits wrote 89 pages at 5k rows and 429 at 60k (58 and 64 without it).
    assert large < 100, (small, large)
    assert large < small * 1.5, (small, large)
