"""Folding at database speed (issue 16): rebuild the sketch buckets of a large store, and the
steady-state fold of one tick's new rows, on SQLite and PostgreSQL.

The store: ``--rows`` raw prediction rows (10 models x 5 segments over 7 days, half labelled,
calibrated and raw confidences), inserted with the driver's executemany (timed, the reference).
Then ``calmon rebuild-aggregates``'s work (``store.aggregates.rebuild``, hourly rollup included)
twice: first over the unfolded backlog (it takes every row off the work list), then again over the
folded store (a recomputation: an empty work list); and
``--ticks`` times a tick's worth of new traffic (``--tick-rows`` new predictions and as many labels
for earlier ones) folded the way the daemon folds (``aggregate_pending`` batches of 50,000 with the
drift evidence and the hourly rollup).

Whatever ``monitor`` is importable is measured, so the same script measures an older checkout:
``PYTHONPATH=/path/to/old/checkout python benchmarks/fold.py --label before ...``.

Run: ``python benchmarks/fold.py --rows 10000000 --out benchmarks/RESULTS.md`` (not in ``make bench``:
the 10M-row store takes minutes to insert per backend).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: an older checkout given there wins

from sqlalchemy import Engine, func, inspect, select, text  # noqa: E402

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.store.aggregates import aggregate_pending, rebuild  # noqa: E402

try:  # older checkouts (measured with PYTHONPATH) have no tidying step
    from monitor.store.aggregates import tidy_after_rebuild
except ImportError:  # pragma: no cover

    def tidy_after_rebuild(engine: Engine) -> None:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("ANALYZE"))
                conn.commit()


from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from monitor.store.schema import predictions, sketch_bins  # noqa: E402

BUCKET = 3600  # as the evaluation benchmark that measured the 10M-row backlog fold
FINE = 120
ECE_BINS = 15
T0 = 1_800_000_000.0
SPAN = 7 * 86400
CHUNK = 100_000
SEGMENTS = 5  # per model (--segments)
VACUUM_EFFECT = False  # --vacuum-effect: also measure the reads before tidying
COLUMNS = (
    "model, prediction_id, segment, ts, received_at, input_kind, raw_confidence, "
    "calibrated_confidence, calibrator_version, correct"
)


def chunks(n: int, start: int, t0: float, span: float, seed: int) -> Iterator[list[tuple[object, ...]]]:
    """Rows in roughly arrival order (prediction times sorted within a chunk, as traffic arrives)."""
    rng = np.random.default_rng(seed)
    for offset in range(0, n, CHUNK):
        size = min(CHUNK, n - offset)
        ts = np.sort(rng.uniform(t0 + span * offset / n, t0 + span * (offset + size) / n, size))
        raw = rng.beta(6.0, 1.5, size)
        calibrated = np.clip(raw - 0.05, 0.0, 1.0)
        correct = rng.random(size) < calibrated
        labelled = rng.random(size) < 0.5
        model = rng.integers(0, 10, size)
        segment = rng.integers(0, SEGMENTS, size)
        yield [
            (f"model-{model[i]}", f"p{start + offset + i}", f"seg-{segment[i]}", float(ts[i]), float(ts[i]),
             "confidence", float(raw[i]), float(calibrated[i]), "1",
             bool(correct[i]) if labelled[i] else None)
            for i in range(size)
        ]  # fmt: skip


def queued(engine: Engine) -> bool:
    """Whether the measured store keeps its work list in ``fold_queue`` (older ones: a row state)."""
    return "fold_queue" in inspect(engine).get_table_names()


def insert(engine: Engine, n: int, start: int, t0: float, span: float, seed: int) -> float:
    """Raw rows, and their work-list rows as calmon's ingest writes them (timed together)."""
    mark = "%s" if engine.dialect.name == "postgresql" else "?"
    statement = f"INSERT INTO predictions ({COLUMNS}) VALUES ({', '.join([mark] * 10)})"  # noqa: S608
    queue = queued(engine)
    began = time.perf_counter()
    for rows in chunks(n, start, t0, span, seed):
        with engine.begin() as conn:
            before = conn.execute(select(func.coalesce(func.max(predictions.c.pk), 0))).scalar_one()
            conn.exec_driver_sql(statement, rows)
            if queue:
                conn.execute(
                    text("INSERT INTO fold_queue (pk, fresh) SELECT pk, true FROM predictions WHERE pk > :b"),
                    {"b": before},
                )
    return time.perf_counter() - began


def label_earlier(engine: Engine, n: int, seed: int) -> None:
    """Labels arriving for ``n`` earlier unlabelled predictions (as ``POST /v1/feedback`` sets them)."""
    rng = np.random.default_rng(seed)
    queue = queued(engine)
    with engine.begin() as conn:
        top = conn.execute(select(func.max(predictions.c.pk))).scalar_one()
        pks = sorted({int(k) for k in rng.integers(max(1, top - 2_000_000), top, 3 * n)})
        chosen = (
            conn.execute(
                select(predictions.c.pk)
                .where(predictions.c.pk.in_(pks), predictions.c.correct.is_(None))
                .limit(n)
            )
            .scalars()
            .all()
        )
        conn.execute(
            text("UPDATE predictions SET correct = :c WHERE pk = :pk"),
            [{"c": bool(rng.random() < 0.8), "pk": pk} for pk in chosen],
        )
        if queue:
            conn.execute(
                text("INSERT INTO fold_queue (pk, fresh) VALUES (:pk, false) ON CONFLICT (pk) DO NOTHING"),
                [{"pk": pk} for pk in chosen],
            )


def fold_all(engine: Engine) -> tuple[float, int]:
    began, rows = time.perf_counter(), 0
    while True:
        with engine.begin() as conn:
            run = aggregate_pending(
                conn, BUCKET, FINE, 50_000, lambda model: 50, ECE_BINS, hour_bins=ECE_BINS
            )
        if not run.rows:
            return time.perf_counter() - began, rows
        rows += run.rows


def run(url: str, rows: int, ticks: int, tick_rows: int) -> dict[str, float]:
    engine = create_store_engine(url)
    upgrade(engine)
    inserted = insert(engine, rows, 0, T0, SPAN, seed=1)
    began = time.perf_counter()
    with engine.begin() as conn:
        folded = rebuild(conn, BUCKET, FINE, cap_of=lambda model: 50, hour_bins=ECE_BINS)
    rebuilt = time.perf_counter() - began
    with engine.connect() as conn:
        buckets = conn.execute(select(func.count()).select_from(sketch_bins)).scalar_one()
    stale = read_latency(url) if VACUUM_EFFECT else {}
    tidy_after_rebuild(engine)  # as `calmon rebuild-aggregates` does after committing
    # Again, now that every row is folded: a recomputation (another bin count, a repair), with an
    # empty work list, against the first rebuild, which also emptied the backlog's.
    began = time.perf_counter()
    with engine.begin() as conn:
        again = rebuild(conn, BUCKET, FINE, cap_of=lambda model: 50, hour_bins=ECE_BINS)
    recomputed = time.perf_counter() - began
    assert again == folded, (again, folded)
    tidy_after_rebuild(engine)
    reads = read_latency(url)
    per_tick = []
    for tick in range(ticks):
        start = rows + tick * tick_rows
        insert(engine, tick_rows, start, T0 + SPAN + tick * 60, 60, seed=100 + tick)
        label_earlier(engine, tick_rows, seed=200 + tick)
        seconds, done = fold_all(engine)
        assert done >= tick_rows, done
        per_tick.append(seconds)
    assert reads["counted"] == rows, reads  # every prediction counted, none twice
    engine.dispose()
    return {
        "rows": folded,
        "insert_rate": rows / inserted,
        "rebuild": rebuilt,
        "recompute": recomputed,
        "buckets": buckets,
        "tick": statistics.median(per_tick),
        **reads,
        **{f"stale_{k}": v for k, v in stale.items()},
    }


def read_latency(url: str, repeats: int = 30) -> dict[str, float]:
    """Median milliseconds of GET /v1/models and GET /v1/models/{model}, through the real app."""
    from fastapi.testclient import TestClient

    from monitor.collector.api import create_app
    from monitor.config import load_settings

    settings = load_settings(None, database_url=url)
    engine = create_store_engine(url)
    found: dict[str, float] = {}
    with TestClient(create_app(settings, engine)) as client:
        for name, path in (("list", "/v1/models"), ("detail", "/v1/models/model-3")):
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - began)
                assert response.status_code == 200, response.text
            found[name] = statistics.median(times)
        body = client.get("/v1/models").json()
    found["counted"] = sum(m["predictions"] for m in body["models"])
    engine.dispose()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--tick-rows", type=int, default=20_000)
    parser.add_argument("--label", default="columnar fold")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--segments", type=int, default=5, help="per model (10 models)")
    parser.add_argument("--vacuum-effect", action="store_true", help="also time the reads before tidying")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    global SEGMENTS, VACUUM_EFFECT
    SEGMENTS = args.segments
    VACUUM_EFFECT = args.vacuum_effect
    lines = [
        "| implementation | backend | rows | series | raw insert (rows/s) | rebuild of the backlog (s) "
        "| rebuild (rows/s) | rebuild of the folded store (s) "
        f"| bucket rows | fold of a tick ({args.tick_rows:,} new predictions + {args.tick_rows:,} labels), "
        f"median of {args.ticks} | GET /v1/models | GET /v1/models/{{model}} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    backends: list[tuple[str, str, object]] = []
    workdir = Path(tempfile.mkdtemp(prefix="calmon-fold-"))
    backends.append(("SQLite", f"sqlite:///{workdir / 'fold.db'}", None))
    cluster = None
    if not args.skip_postgres:
        from tests.support import pgcluster

        cluster = pgcluster.start_cluster(durable=True)
        backends.append(("PostgreSQL (fsync on)", cluster.url(), None))
    try:
        for name, url, _ in backends:
            r = run(url, args.rows, args.ticks, args.tick_rows)
            lines.append(
                f"| {args.label} | {name} | {int(r['rows']):,} | {10 * args.segments:,} "
                f"| {r['insert_rate']:,.0f} | {r['rebuild']:.1f} | {r['rows'] / r['rebuild']:,.0f} "
                f"| {r['recompute']:.1f} | {int(r['buckets']):,} "
                f"| {r['tick'] * 1000:.0f} ms | {r['list'] * 1000:.1f} ms | {r['detail'] * 1000:.1f} ms |"
            )
            if "stale_list" in r:
                print(
                    f"reads before tidying: {r['stale_list'] * 1000:.1f} / {r['stale_detail'] * 1000:.1f} ms"
                )
            print(lines[-1], flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)  # a 10M-row store is ~2 GB
    report = (
        f"### Fold ({time.strftime('%Y-%m-%d')}): bucket_seconds={BUCKET}, fine_bins={FINE}\n\n"
        f"Machine: {machine()}\n\n" + "\n".join(lines)
    )
    print(report)
    if args.out:
        write_section(args.out, f"fold-{args.label.replace(' ', '-')}", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
