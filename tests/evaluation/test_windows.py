"""Window metrics from buckets equal the calibration core applied to the raw rows of the window."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine, select

from monitor.calibration import metrics as m
from monitor.calibration.drift import psi
from monitor.evaluation.windows import WindowSpec, evaluate
from monitor.store.aggregates import aggregate_pending, rebuild
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.schema import sketch_bins
from monitor.store.segments import load_positions
from monitor.vocabulary import MODEL_WIDE, OTHER_SEGMENT

BUCKET, FINE, BINS = 300, 120, 15
NOW = 1_800_000_000.0  # a multiple of the bucket width: window starts fall on bucket starts
HOUR, DAY = 3600, 86400
EDGES = np.linspace(0, 1, FINE + 1)


def off_edge(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.random(n)
    near = np.min(np.abs(p[:, None] - EDGES[None, :]), axis=1) < 1e-9
    p[near] += 1e-6
    return p


@pytest.fixture
def world(engine: Engine) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n = 3000
    ts = NOW - rng.random(n) * 2 * DAY  # two days: the 24h window and its reference period
    raw = off_edge(rng, n)
    calibrated = np.clip(raw**1.4, 0, 1)
    segment = rng.choice(["a", "b", "c"], n)
    truth = rng.random(n) < raw**1.5  # overconfident model
    labelled = rng.random(n) < 0.8
    rows = [
        PredictionRow("clf", f"p{i}", str(segment[i]), float(ts[i]), "confidence", float(raw[i]), None, None,
                      float(calibrated[i]), "1")
        for i in range(n)
    ]  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, rows[: n // 2], now=NOW)
        apply_feedback(
            conn, [FeedbackItem("clf", f"p{i}", bool(truth[i]), None) for i in range(n) if labelled[i]], NOW
        )
        aggregate_pending(conn, BUCKET, FINE)  # part of the labels arrive before their predictions
        insert_predictions(conn, rows[n // 2 :], now=NOW)
        while aggregate_pending(conn, BUCKET, FINE, limit=700).rows:
            pass
    return {
        "ts": ts,
        "raw": raw,
        "calibrated": calibrated,
        "segment": segment,
        "truth": truth,
        "labelled": labelled,
    }


def test_window_metrics_equal_core_metrics_on_raw_rows(engine: Engine, world: dict[str, np.ndarray]) -> None:
    with engine.connect() as conn:
        stats = evaluate(conn, [WindowSpec("1h", HOUR), WindowSpec("24h", DAY)], NOW, BUCKET, FINE, BINS)
    found = {(s.segment, s.window, s.score): s for s in stats}
    for window, seconds in (("1h", HOUR), ("24h", DAY)):
        inside = world["ts"] >= NOW - seconds
        before = (world["ts"] >= NOW - 2 * seconds) & ~inside
        for segment in ("a", "b", MODEL_WIDE):
            chosen = inside & ((world["segment"] == segment) if segment != MODEL_WIDE else True)
            for score in ("raw", "calibrated"):
                s = found[(segment, window, score)]
                p_all = world[score][chosen]
                lab = world["labelled"][chosen]
                p, y = p_all[lab], world["truth"][chosen][lab].astype(float)
                assert (s.predictions, s.labelled, s.missing_labels) == (
                    chosen.sum(),
                    lab.sum(),
                    (~lab).sum(),
                )
                assert s.label_coverage == pytest.approx(lab.mean())
                assert s.ece == pytest.approx(m.expected_calibration_error(p, y, BINS), abs=1e-9)
                assert s.mce == pytest.approx(m.maximum_calibration_error(p, y, BINS), abs=1e-9)
                assert s.brier == pytest.approx(m.brier_score(p, y), abs=1e-9)
                assert s.debiased_ce == pytest.approx(m.debiased_calibration_error(p, y, BINS), abs=1e-9)
                assert s.accuracy == pytest.approx(y.mean()) and s.mean_confidence == pytest.approx(p.mean())
                z, pv = m.spiegelhalter_z(p, y)
                assert s.spiegelhalter_z == pytest.approx(z, rel=1e-7) and s.spiegelhalter_p == pytest.approx(
                    pv, abs=1e-9
                )
                assert s.ece_ci_lower <= s.ece <= s.ece_ci_upper
                table = m.reliability_table(p, y, BINS)
                assert [r["count"] for r in s.reliability] == table.count.astype(int).tolist()
                reference = world[score][
                    before & ((world["segment"] == segment) if segment != MODEL_WIDE else True)
                ]
                hist = lambda v: np.bincount(m.bin_index(v, BINS), minlength=BINS)  # noqa: E731
                assert s.histogram == hist(p_all).tolist()
                assert s.psi == pytest.approx(psi(hist(reference), hist(p_all)), rel=1e-9)


def test_segments_beyond_the_cap_are_folded_into_other_where_buckets_are_written(
    engine: Engine, world: dict[str, np.ndarray]
) -> None:
    def one(model: str) -> int:
        return 1

    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE, cap_of=one)  # the fold writes the capped series
        written = {s for (s,) in conn.execute(select(sketch_bins.c.segment).distinct())}
        first = next(iter(load_positions(conn)["clf"]))
    assert written == {first, OTHER_SEGMENT}  # the first segment folded keeps its series
    with engine.connect() as conn:
        stats = evaluate(conn, [WindowSpec("24h", DAY)], NOW, BUCKET, FINE, BINS, cap_of=one)
    assert {s.segment for s in stats} == {MODEL_WIDE, OTHER_SEGMENT, first}
    total = next(s for s in stats if s.segment == MODEL_WIDE and s.score == "raw")
    parts = [s for s in stats if s.segment != MODEL_WIDE and s.score == "raw"]
    assert sum(s.predictions for s in parts) == total.predictions
    # a later fold under a larger cap registers new segments but never moves the first one
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE, cap_of=lambda model: 5)
        positions = load_positions(conn)["clf"]
    assert positions[first] == 0 and sorted(positions) == ["a", "b", "c"]


def test_two_segments_swapping_rank_at_the_cap_move_nothing_into_other(engine: Engine) -> None:
    """Capping by volume per period made two unchanged segments that swapped rank look like a shift of
    `other` (PSI 16.1 in the review); the fold-time cap keeps each segment in one series for ever."""
    rng = np.random.default_rng(8)
    rows = []
    for period, volumes in ((0, {"s1": 300, "s2": 200, "s3": 20}), (1, {"s1": 20, "s2": 200, "s3": 300})):
        for segment, n in volumes.items():
            centre = {"s1": 0.9, "s2": 0.6, "s3": 0.3}[segment]  # each segment's distribution never changes
            for i, p in enumerate(np.clip(rng.normal(centre, 0.03, n), 0.01, 0.99)):
                ts = NOW - DAY - 3600 + period * DAY + i  # previous day, then the current one
                rows.append(PredictionRow("m", f"{period}{segment}{i}", segment, ts, "confidence", float(p),
                                          None, None, float(p), "1"))  # fmt: skip
    with engine.begin() as conn:
        insert_predictions(conn, sorted(rows, key=lambda r: r.ts), now=NOW)
        while aggregate_pending(conn, BUCKET, FINE, cap_of=lambda model: 2).rows:
            pass
    with engine.connect() as conn:
        stats = evaluate(conn, [WindowSpec("24h", DAY)], NOW, BUCKET, FINE, BINS, cap_of=lambda model: 2)
    other = next(s for s in stats if s.segment == OTHER_SEGMENT and s.score == "raw")
    assert other.psi is not None and other.psi < 0.25  # s3 alone, in both periods: no shift
    assert {s.segment for s in stats} == {"s1", "s2", OTHER_SEGMENT, MODEL_WIDE}


def test_rolling_windows_equal_a_fresh_evaluation_as_time_slides(engine: Engine) -> None:
    """The leader's in-memory windows (deltas + slides) always equal summing the buckets anew."""
    from monitor.evaluation.rolling import RollingWindows
    from monitor.evaluation.windows import evaluate_periods

    specs = [WindowSpec("1h", HOUR), WindowSpec("2h", 2 * HOUR)]
    rolling = RollingWindows([(s.name, s.seconds) for s in specs], BUCKET, FINE, reload_seconds=10**9)
    rng = np.random.default_rng(7)
    now = NOW
    with engine.connect() as conn:
        rolling.load(conn, now)
    sent = 0
    for _ in range(12):
        now += 700  # slides across bucket boundaries
        n = 150
        ts = now - rng.random(n) * 3 * HOUR  # some land in the reference, some beyond both periods
        rows = [
            PredictionRow(
                "roll",
                f"r{sent + i}",
                ["x", "y"][i % 2],
                float(ts[i]),
                "confidence",
                float(rng.random()),
                None,
                None,
                float(rng.random()),
                "1",
            )
            for i in range(n)
        ]
        with engine.begin() as conn:
            insert_predictions(conn, rows, now=now)
            # late labels for earlier predictions, some of them already outside the windows
            late = [
                FeedbackItem("roll", f"r{i}", bool(rng.random() < 0.5), None)
                for i in rng.choice(sent + n, size=60, replace=False)
            ]
            apply_feedback(conn, late, now)
            rolling.apply(aggregate_pending(conn, BUCKET, FINE).deltas)
        with engine.connect() as conn:
            rolling.advance(conn, now)
            fresh = evaluate(conn, specs, now, BUCKET, FINE, BINS, n_boot=50)
        incremental = evaluate_periods(
            specs, {s.name: rolling.periods(s.name) for s in specs}, BINS, n_boot=50
        )
        sent += n
        assert [(s.segment, s.window, s.score, s.predictions, s.labelled) for s in incremental] == [
            (s.segment, s.window, s.score, s.predictions, s.labelled) for s in fresh
        ]
        for a, b in zip(incremental, fresh, strict=True):
            for name in ("ece", "brier", "mce", "psi", "spiegelhalter_z"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9, abs=1e-12), (
                    name,
                    a.window,
                )
