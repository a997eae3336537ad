"""The fold's set-based statements: which rows a batch reads, the numbers it reads back, and the one
statement that takes them off the work list — on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select

from monitor.store.engine import create_store_engine
from monitor.store.folding import Batch, Columns, fetch_columns, mark_folded, series_pairs, use_series
from monitor.store.migrate import upgrade
from monitor.store.schema import fold_queue, predictions
from tests.helpers import fold_states, queue_as

T0 = 1_800_000_000.0


def store(engine: Engine, rows: list[tuple[str, float, bool | None, int]]) -> int:
    """(segment, confidence, correct, agg_state) rows of model m; the first pk."""
    with engine.begin() as conn:
        conn.execute(
            insert(predictions),
            [
                {
                    "model": "m",
                    "prediction_id": f"i{i}",
                    "segment": segment,
                    "ts": T0 + i,
                    "received_at": 0.0,
                    "input_kind": "confidence",
                    "raw_confidence": p,
                    "calibrated_confidence": p / 2,
                    "calibrator_version": "x",
                    "correct": correct,
                }
                for i, (segment, p, correct, _) in enumerate(rows)
            ],
        )
        first = int(conn.execute(select(func.min(predictions.c.pk))).scalar_one())
        queue_as(conn, {first + i: (state, correct) for i, (_, _, correct, state) in enumerate(rows)})
        return first


def states(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        by_id = fold_states(conn)
    return [by_id[f"i{i}"] for i in range(len(by_id))]


def test_a_pending_batch_reads_and_marks_only_rows_needing_work(engine: Engine) -> None:
    first = store(
        engine,
        [("b", 0.9, True, 0), ("a", 0.8, None, 0), ("a", 0.7, True, 2), ("b", 0.6, None, 1),
         ("a", 0.5, False, 1), ("b", 0.4, None, 0)],
    )  # fmt: skip
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        # exact pks come with the fresh ones among them, as the fold reads them off the work list
        batch = Batch.pending([first, first + 1, first + 4], exact=postgres, fresh=[first, first + 1])
        pairs = series_pairs(conn, batch)
        assert pairs == [("m", "b"), ("m", "a")]  # in the order the fold meets them
        use_series(conn, pairs)
        rows = fetch_columns(conn, batch)
        assert rows.series.tolist() == [0, 1, 1]
        assert rows.raw.tolist() == [0.9, 0.8, 0.5] and rows.calibrated.tolist() == [0.45, 0.4, 0.25]
        assert rows.correct.tolist() == [1.0, -1.0, 0.0]  # -1: no label
        assert rows.fresh.tolist() == [True, True, False]  # the last: its label only
        assert np.array_equal(rows.ts, T0 + np.array([0.0, 1.0, 4.0]))
        assert mark_folded(conn, batch) == 3
    assert states(engine) == [2, 1, 2, 1, 2, 0]  # the sixth was not in the batch


def test_a_rebuild_batch_counts_every_row_whole_and_marks_those_needing_work(engine: Engine) -> None:
    first = store(
        engine, [("a", 0.9, True, 2), ("a", 0.8, None, 1), ("a", 0.7, True, 1), ("a", 0.6, None, 0)]
    )
    with engine.begin() as conn:
        batch = Batch(first, first + 3, rebuild=True, since=T0 + 1)
        use_series(conn, series_pairs(conn, batch))
        rows = fetch_columns(conn, batch)
        assert rows.raw.tolist() == [0.8, 0.7, 0.6] and rows.fresh.all()  # from since on, whatever state
        assert mark_folded(conn, batch) == 2
    assert states(engine) == [2, 1, 2, 1]


@pytest.mark.postgres
def test_on_postgresql_a_pk_range_read_by_binary_copy_equals_the_row_by_row_read(pg_url: str) -> None:
    """A pk range (a rebuild's) is read with ``COPY ... (FORMAT BINARY)`` and parsed by NumPy; the
    exact pks (the tick's) row by row: the same rows give the same numbers to the bit."""
    engine = create_store_engine(pg_url)
    upgrade(engine)
    rng = np.random.default_rng(5)
    n = 3000
    first = store(
        engine,
        [
            (f"s{i % 3}", float(rng.random()), [None, True, False][i % 3], [0, 1, 2][i % 5 % 3])
            for i in range(n)
        ],
    )
    try:
        with engine.begin() as conn:
            pks = list(range(first, first + n))
            ranged = Batch.pending(pks, exact=False)
            use_series(conn, series_pairs(conn, ranged))
            copied = fetch_columns(conn, ranged)
            queued = conn.execute(select(fold_queue.c.pk, fold_queue.c.fresh).order_by(fold_queue.c.pk)).all()
            listed = Batch.pending([k for k, _ in queued], exact=True, fresh=[k for k, f in queued if f])
            exact = fetch_columns(conn, listed)
            empty = fetch_columns(conn, Batch(first + n, first + 2 * n))
        assert 0 < copied.size < n  # only the rows needing work, read both ways
        for name in Columns.__dataclass_fields__:
            a, b = getattr(copied, name), getattr(exact, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert empty.size == 0 and empty.series.dtype == np.int64
    finally:
        engine.dispose()
