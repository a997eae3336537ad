"""Sketch buckets: incremental aggregation == rebuild from raw rows, under any interleaving."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

from monitor.calibration.sketch import CalibrationSketch
from monitor.cli import main
from monitor.config import DatabaseConfig
from monitor.store.aggregates import aggregate_pending, bucket_of, load_sketches, rebuild
from monitor.store.engine import create_store_engine
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.migrate import upgrade
from monitor.store.queries import model_counts
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.schema import (
    feedback_conflicts,
    fold_queue,
    pending_feedback,
    predictions,
    series_totals,
    sketch_bins,
)

BUCKET = 300
FINE = 120


def snapshot(engine: Engine) -> dict[tuple[Any, ...], np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(select(sketch_bins)).all()
    return {(r.model, r.segment, r.score, r.bucket_start, r.bin): np.array(r[5:], dtype=float) for r in rows}


def same(a: dict[tuple[Any, ...], np.ndarray], b: dict[tuple[Any, ...], np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-12, atol=1e-9) for k in a)


def direct(engine: Engine) -> dict[tuple[str, str, str, float], CalibrationSketch]:
    """Sketches straight from the raw rows, per (model, segment, score, bucket)."""
    with engine.connect() as conn:
        rows = conn.execute(select(predictions)).all()
    out: dict[tuple[str, str, str, float], CalibrationSketch] = {}
    for r in rows:
        bucket = float(bucket_of(np.array([r.ts]), BUCKET)[0])
        for score, p in (("raw", r.raw_confidence), ("calibrated", r.calibrated_confidence)):
            sketch = out.setdefault((r.model, r.segment, score, bucket), CalibrationSketch(FINE))
            sketch.add_predictions([p])
            if r.correct is not None:
                sketch.add_labelled([p], [r.correct])
    return out


def direct_counts(engine: Engine) -> dict[str, tuple[float, ...]]:
    """Per segment of model m, from the raw rows: predictions, labelled, correct, summed raw
    confidence of the labelled, first and last prediction time."""
    with engine.connect() as conn:
        rows = conn.execute(select(predictions)).all()
    out: dict[str, list[float]] = {}
    for r in rows:
        c = out.setdefault(r.segment, [0, 0, 0, 0.0, r.ts, r.ts])
        labelled = r.correct is not None
        c[0] += 1
        c[1] += labelled
        c[2] += bool(r.correct)
        c[3] += r.raw_confidence if labelled else 0.0
        c[4], c[5] = min(c[4], r.ts), max(c[5], r.ts)
    return {s: tuple(c) for s, c in out.items()}


def served_counts(engine: Engine) -> dict[str, tuple[float, ...]]:
    """What the model endpoints count (the fold's totals and the rows not folded yet), per segment."""
    with engine.connect() as conn:
        counts = model_counts(conn).get("m")
    out: dict[str, list[float]] = {}
    for s in counts.segments if counts else []:
        c = out.setdefault(s.segment, [0, 0, 0, 0.0, s.first_ts, s.last_ts])
        c[0] += s.predictions
        c[1] += s.labelled
        c[2] += s.correct
        c[3] += s.raw_confidence_sum_labelled
        c[4], c[5] = min(c[4], s.first_ts), max(c[5], s.last_ts)
    return {s: tuple(c) for s, c in out.items()}


def same_counts(a: dict[str, tuple[float, ...]], b: dict[str, tuple[float, ...]]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-12) for k in a)


WORLD = [(f"p{i}", f"s{i % 2}", 1000.0 + 170.0 * i, round(0.03 + 0.097 * i, 4)) for i in range(10)]
op = st.one_of(
    st.tuples(st.just("predict"), st.lists(st.integers(0, 9), min_size=1, max_size=4)),
    st.tuples(
        st.just("feedback"), st.lists(st.tuples(st.integers(0, 11), st.booleans()), min_size=1, max_size=4)
    ),
    st.tuples(st.just("aggregate"), st.integers(1, 6)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=14))
def test_incremental_equals_rebuild_under_any_interleaving(engine: Engine, ops: list[Any]) -> None:
    with engine.begin() as conn:
        for table in (sketch_bins, predictions, pending_feedback, feedback_conflicts, series_totals):
            conn.execute(delete(table))
    for kind, arg in ops:
        with engine.begin() as conn:
            if kind == "predict":
                rows = [PredictionRow("m", WORLD[i][0], WORLD[i][1], WORLD[i][2], "confidence", WORLD[i][3],
                                      None, None, min(1.0, WORLD[i][3] * 1.1), "1") for i in arg]  # fmt: skip
                insert_predictions(conn, rows, now=5000.0)
            elif kind == "feedback":  # ids 10, 11 never arrive; repeats and flips are duplicates / conflicts
                items = [FeedbackItem("m", f"p{i}", value, None) for i, value in arg]
                apply_feedback(conn, items, now=6000.0)
            else:
                aggregate_pending(conn, BUCKET, FINE, limit=arg)
        assert same_counts(served_counts(engine), direct_counts(engine))  # folded or not, counted once
    with engine.begin() as conn:  # drain what is left, as the next scheduler tick would
        while aggregate_pending(conn, BUCKET, FINE, limit=5).rows:
            pass
    incremental = snapshot(engine)
    assert same_counts(served_counts(engine), direct_counts(engine))
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE, batch=3, since=2000.0)
    assert same(incremental, snapshot(engine)) and same_counts(served_counts(engine), direct_counts(engine))
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE, batch=3)
    assert same(incremental, snapshot(engine)) and same_counts(served_counts(engine), direct_counts(engine))
    with engine.connect() as conn:  # the work list is empty
        assert conn.execute(select(func.count()).select_from(fold_queue)).scalar() == 0
    expected = direct(engine)
    with engine.connect() as conn:
        for (model, segment, score, bucket), sketch in expected.items():
            loaded = load_sketches(conn, FINE, since=bucket, until=bucket + BUCKET)[(model, segment, score)]
            np.testing.assert_allclose(loaded.moments, sketch.moments, rtol=1e-12, atol=1e-12)


def test_windows_sum_buckets_by_prediction_time(engine: Engine) -> None:
    rows = [PredictionRow("m", f"p{i}", "default", 1000.0 * i, "confidence", 0.6, None, None, 0.6, "1")
            for i in range(6)]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows, now=9000.0)
        apply_feedback(
            conn, [FeedbackItem("m", "p1", True, None), FeedbackItem("m", "p4", False, None)], now=9001.0
        )
        assert aggregate_pending(conn, BUCKET, FINE).rows == 6
        assert aggregate_pending(conn, BUCKET, FINE).rows == 0  # nothing left: no double count
        # a late label lands in the bucket of its prediction (ts 3000), not of its arrival
        apply_feedback(conn, [FeedbackItem("m", "p3", True, None)], now=20000.0)
        assert aggregate_pending(conn, BUCKET, FINE).rows == 1
    with engine.connect() as conn:
        window = load_sketches(conn, FINE, since=2700.0, until=4200.0)[("m", "default", "raw")]
        # buckets 3000 and 3900 hold p3 (ts 3000, labelled late) and p4 (ts 4000, labelled early)
        assert window.predictions == 2 and window.labelled == 2
        assert window.accuracy() == 0.5
        everything = load_sketches(conn, FINE)[("m", "default", "calibrated")]
        assert everything.predictions == 6 and everything.labelled == 3


def test_rebuild_keeps_the_history_whose_raw_rows_retention_removed(engine: Engine) -> None:
    """Buckets before the retention cutoff are the only record left: a rebuild must not drop them."""
    rows = [
        PredictionRow("m", f"p{i}", "default", ts, "confidence", p, None, None, p, "1")
        for i, (ts, p) in enumerate([(100.0, 0.9), (400.0, 0.7), (5000.0, 0.8), (5400.0, 0.6)])
    ]
    with engine.begin() as conn:
        insert_predictions(conn, rows, now=6000.0)
        apply_feedback(conn, [FeedbackItem("m", f"p{i}", i % 2 == 0, None) for i in range(4)], now=6000.0)
        while aggregate_pending(conn, BUCKET, FINE).rows:
            pass
    before = snapshot(engine)
    with engine.begin() as conn:  # retention removes the raw rows before 3000
        conn.execute(delete(predictions).where(predictions.c.ts < 3000.0))
    with engine.begin() as conn:
        assert rebuild(conn, BUCKET, FINE, since=3000.0) == 2
    assert same(before, snapshot(engine))  # old buckets kept, recent ones recomputed identically
    old = {key for key in before if key[3] < 3000.0}
    assert old  # there was history to lose
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE)  # --all: from the raw rows alone
    assert set(snapshot(engine)) == set(before) - old


def test_cli_rebuild_recomputes_only_after_the_retention_cutoff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    now = time.time()
    store = create_store_engine(url, DatabaseConfig())
    upgrade(store)
    rows = [
        PredictionRow("m", f"p{i}", "default", ts, "confidence", 0.8, None, None, 0.8, "1")
        for i, ts in enumerate([now - 40 * 86400, now - 3600])
    ]
    with store.begin() as conn:
        insert_predictions(conn, rows, now=now)
        while aggregate_pending(conn, 300, 120).rows:
            pass
        conn.execute(delete(predictions).where(predictions.c.ts < now - 30 * 86400))  # retention
    store.dispose()
    monkeypatch.setenv("CALMON_RETENTION__RAW_DAYS", "30")
    assert main(["rebuild-aggregates", "--database-url", url]) == 0
    assert "from 1 prediction rows newer than" in capsys.readouterr().out
    store = create_store_engine(url, DatabaseConfig())
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sketch_bins)).scalar() == 2 * 2  # both kept
    store.dispose()
    assert main(["rebuild-aggregates", "--all", "--database-url", url]) == 0
    assert "from 1 prediction rows\n" in capsys.readouterr().out


def test_a_rebuild_repairs_buckets_that_differ_from_the_raw_rows(engine: Engine) -> None:
    """What a rebuild is for besides a backlog: a bucket row changed, one lost, one that no row
    produced: all back to what the raw rows say (on PostgreSQL only those rows are written)."""
    rows = [
        PredictionRow("m", f"p{i}", f"s{i % 2}", 1000.0 + 97.0 * i, "confidence", 0.05 + 0.09 * i, None, None,
                      0.1 + 0.08 * i, "1")
        for i in range(10)
    ]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows, now=5000.0)
        apply_feedback(
            conn, [FeedbackItem("m", f"p{i}", i % 3 == 0, None) for i in range(0, 10, 2)], now=6000.0
        )
        while aggregate_pending(conn, BUCKET, FINE).rows:
            pass
    good = snapshot(engine)
    (changed, *_), lost = sorted(good), max(good)
    with engine.begin() as conn:
        where = [
            sketch_bins.c[k] == v
            for k, v in zip(("model", "segment", "score", "bucket_start", "bin"), changed, strict=True)
        ]
        conn.execute(sketch_bins.update().where(*where).values(sum_p=sketch_bins.c.sum_p + 0.25, n=7))
        gone = [
            sketch_bins.c[k] == v
            for k, v in zip(("model", "segment", "score", "bucket_start", "bin"), lost, strict=True)
        ]
        conn.execute(delete(sketch_bins).where(*gone))
        stray = {"model": "m", "segment": "s9", "score": "raw", "bucket_start": 0.0, "bin": 3}
        stray |= {c: 1.0 for c in ("n", "sum_p", "s2", "s3", "s4")} | {
            c: 0.0 for c in ("n_l", "s1", "sy", "syp", "sll")
        }
        conn.execute(sketch_bins.insert().values(**stray))
    assert not same(good, snapshot(engine))
    with engine.begin() as conn:
        assert rebuild(conn, BUCKET, FINE) == 10
    assert same(good, snapshot(engine))
