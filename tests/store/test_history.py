"""The hourly rollup the status page's history reads: always the fine buckets coarsened (after every
fold, after a rebuild, after an ece_bins change), and a history equal to a recomputation from the
raw rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select

from monitor.calibration.metrics import expected_calibration_error
from monitor.store.aggregates import aggregate_pending, rebuild
from monitor.store.history import HOUR, ensure_hours, rebuild_hours, sketch_history
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.schema import MOMENT_COLUMNS, sketch_bins, sketch_hours

BUCKET, FINE, BINS = 300, 120, 15
START = 1_800_000_000.0  # a whole hour


def hours_table(engine: Engine, bins: int = BINS) -> dict[tuple[Any, ...], np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(select(sketch_hours).where(sketch_hours.c.bins == bins)).all()
    return {(r.model, r.segment, r.score, r.hour_start, r.bin): np.array(r[6:], dtype=float) for r in rows}


def coarsened_buckets(engine: Engine, bins: int = BINS) -> dict[tuple[Any, ...], np.ndarray]:
    """The fine buckets summed per hour and coarse bin, in Python: what the rollup must hold (the
    tail's rows, bins >= FINE, left out: their predictions are already in the top uniform bins)."""
    out: dict[tuple[Any, ...], np.ndarray] = {}
    with engine.connect() as conn:
        for r in conn.execute(select(sketch_bins)).all():
            if r.bin >= FINE:  # the tail: a finer recount of the top bins
                continue
            key = (r.model, r.segment, r.score, float(r.bucket_start // HOUR * HOUR), r.bin // (FINE // bins))
            values = np.array([getattr(r, m) for m in MOMENT_COLUMNS], dtype=float)
            out[key] = out[key] + values if key in out else values
    return {k: v for k, v in out.items() if v[0] or v[2]}


def same(a: dict[tuple[Any, ...], np.ndarray], b: dict[tuple[Any, ...], np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-12, atol=1e-9) for k in a)


def stream(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    ts = START + rng.uniform(0, 30 * HOUR, n)
    p = rng.uniform(0.3, 1.0, n)
    correct = rng.random(n) < p - 0.1 * (ts > START + 20 * HOUR)
    segment = rng.integers(0, 3, n)
    return ts, p, correct, segment


def load(engine: Engine, ts: np.ndarray, p: np.ndarray, correct: np.ndarray, segment: np.ndarray) -> None:
    """Predictions, then labels in three late waves, each followed by folds with the rollup."""
    rows = [PredictionRow("m", f"id{i}", f"s{segment[i]}", float(ts[i]), "confidence", float(p[i]), None,
                          None, float(p[i]), "identity") for i in range(ts.size)]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows, START + 31 * HOUR)
    for wave in range(3):
        with engine.begin() as conn:
            while aggregate_pending(conn, BUCKET, FINE, limit=700, hour_bins=BINS).rows:
                pass
        labelled = [FeedbackItem("m", f"id{i}", bool(correct[i]), None) for i in range(wave, ts.size, 3)]
        with engine.begin() as conn:
            apply_feedback(conn, labelled, START + 31 * HOUR)
    with engine.begin() as conn:
        while aggregate_pending(conn, BUCKET, FINE, limit=700, hour_bins=BINS).rows:
            pass


def test_the_rollup_is_the_buckets_coarsened_after_folds_rebuilds_and_a_bins_change(engine: Engine) -> None:
    load(engine, *stream())
    folded = hours_table(engine)
    assert len(folded) > 100 and same(folded, coarsened_buckets(engine))
    with engine.begin() as conn:
        rebuild_hours(conn, BINS, FINE)  # the set-based recomputation agrees with the fold's
    assert same(hours_table(engine), folded)
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE, since=START + 10 * HOUR + 17, hour_bins=BINS)
    assert same(hours_table(engine), folded)
    with engine.begin() as conn:
        assert not ensure_hours(conn, BINS, FINE)  # current: nothing to do
        assert ensure_hours(conn, 5, FINE)  # ece_bins changed: recomputed at 5 bins
    assert same(hours_table(engine, 5), coarsened_buckets(engine, 5)) and not hours_table(engine, BINS)


@pytest.mark.parametrize("step", [HOUR, 3 * HOUR])
def test_history_from_the_rollup_equals_a_recomputation_from_raw_rows(engine: Engine, step: int) -> None:
    ts, p, correct, segment = stream(seed=1)
    load(engine, ts, p, correct, segment)
    with engine.connect() as conn:
        wide = sketch_history(conn, "m", int(START), step, FINE, BINS)
        one = sketch_history(conn, "m", int(START), step, FINE, BINS, only=["s1"])
        rest = sketch_history(conn, "m", int(START), step, FINE, BINS, exclude=["s1"])
        fine = sketch_history(conn, "m", int(START) + BUCKET, 2 * BUCKET, FINE, BINS)  # from the buckets
    for found, chosen in ((wide, segment >= 0), (one, segment == 1), (rest, segment != 1)):
        periods = {start for _, start in found}
        assert len(periods) == int(np.ceil(30 * HOUR / step))
        for start in periods:
            inside = chosen & (ts >= start) & (ts < start + step)
            sketch = found[("raw", start)]
            assert sketch.predictions == inside.sum() and sketch.labelled == inside.sum()
            assert sketch.ece(BINS) == pytest.approx(
                expected_calibration_error(p[inside], correct[inside], BINS)
            )
    inside = (ts >= START + BUCKET) & (ts < START + 3 * BUCKET)
    assert fine[("raw", START + BUCKET)].predictions == inside.sum()
