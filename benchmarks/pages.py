"""Status page benchmark: render time of each page with 50 model-segments and a week of buckets.

Data: 5 models x 10 segments, 7 days of 5-minute sketch buckets at ``--rate`` predictions per
segment per bucket (labelled, except a late-label tail in the last 2 hours), written into the
buckets directly (pages read buckets, never raw rows), plus a calibrator, events and one real
recalibration report. One evaluation publishes the snapshot. Then each page is fetched in-process
through the ASGI app (FastAPI, templates, charts, SQL): *cold* with the chart cache emptied
before every request (the first view after an evaluation), *warm* as a second view.

Run: `python benchmarks/pages.py --out benchmarks/RESULTS.md` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.app import Daemon, build, settle_heap  # noqa: E402
from monitor.calibration.sketch import grouped_moments  # noqa: E402
from monitor.config import Settings, load_settings  # noqa: E402
from monitor.store.aggregates import BucketDelta, _upsert  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from monitor.store.models import register_models  # noqa: E402
from monitor.store.segments import SegmentMap  # noqa: E402
from monitor.vocabulary import Trigger  # noqa: E402
from monitor.web.figures import ChartCache  # noqa: E402
from tests.support import pgcluster  # noqa: E402

MODELS, SEGMENTS, BUCKET, DAYS = 5, 10, 300, 7


def populate(engine: object, settings: Settings, now: float, rate: int, seed: int = 0) -> int:
    """Every bucket of every series, as the fold would have written it; the stored row count."""
    rng = np.random.default_rng(seed)
    fine = settings.evaluation.fine_bins
    buckets = np.arange(np.floor((now - DAYS * 86400) / BUCKET) * BUCKET, now, BUCKET)
    rows = 0
    with engine.begin() as conn:  # type: ignore[attr-defined]
        register_models(conn, {f"model-{m}": float(buckets[0]) for m in range(MODELS)})
        segments = SegmentMap({}, settings.max_segments_for)
        for m in range(MODELS):
            for s in range(SEGMENTS):
                segments.series(f"model-{m}", f"seg-{s}")
        segments.save(conn)
    for m in range(MODELS):
        for s in range(SEGMENTS):
            counts = rng.poisson(rate, buckets.size)
            group = np.repeat(np.arange(buckets.size), counts)
            p = 0.45 + 0.55 * rng.beta(4.0, 1.2, group.size)
            y = (rng.random(group.size) < np.clip(p - 0.03 * m, 0, 1)).astype(float)
            late = buckets[group] > now - 7200
            labelled = ~late | (rng.random(group.size) < 0.3)
            moments = grouped_moments(group, buckets.size, fine, p, y, np.ones(group.size, bool), labelled)
            deltas = [
                BucketDelta(f"model-{m}", f"seg-{s}", score, float(buckets[b]), moments[b])
                for b in range(buckets.size)
                for score in ("raw", "calibrated")
            ]
            with engine.begin() as conn:  # type: ignore[attr-defined]
                _upsert(conn, deltas)
            rows += int(sum(np.count_nonzero(moments[b][0]) for b in range(buckets.size))) * 2
    return rows


def one_report(daemon: Daemon, now: float) -> int:
    """A real recalibration of model-0 on 6000 raw rows: its calibrator id (for the report page)."""
    rng = np.random.default_rng(1)
    services = daemon.app.state.context.services
    p = 0.45 + 0.55 * rng.beta(4.0, 1.2, 6000)
    correct = rng.random(6000) < np.clip(p - 0.15, 0, 1)
    records = [{"model": "model-0", "segment": "seg-0", "id": f"r{i}", "confidence": float(p[i]),
                "ts": now - 3000 + i * 0.5} for i in range(6000)]  # fmt: skip
    services.ingest_predictions(orjson.dumps({"predictions": records}))
    feedback = [{"model": "model-0", "id": f"r{i}", "correct": bool(correct[i])} for i in range(6000)]
    services.ingest_feedback(orjson.dumps({"feedback": feedback}))
    outcome = daemon.recalibrator.run("model-0", "*", Trigger.MANUAL)
    assert outcome.calibrator_id is not None, outcome
    return int(outcome.calibrator_id)


def timed(fetch: Callable[[], int], repeat: int, cold: bool, charts: ChartCache) -> tuple[float, float]:
    """Median and max milliseconds of ``repeat`` fetches (each must answer 200)."""
    samples = []
    for _ in range(repeat):
        if cold:
            charts.clear()
        started = time.perf_counter()
        assert fetch() == 200
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def run(url: str, label: str, rate: int, repeat: int) -> list[str]:
    now = time.time()
    settings = load_settings(None, database_url=url, evaluation={"bucket_seconds": BUCKET})
    engine = create_store_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    stored = populate(engine, settings, now, rate)
    populate_s = time.perf_counter() - started
    daemon = build(settings, clock=lambda: now, instance_id="bench", engine=engine)
    report_id = one_report(daemon, now)
    daemon.scheduler.renew_lease()
    started = time.perf_counter()
    daemon.scheduler.evaluate_once()
    evaluate_s = time.perf_counter() - started
    settle_heap()  # as ``calmon serve`` does once started
    paths = {
        "overview `/`": "/",
        "model page, model-wide, 1h": "/models/model-1",
        "model page, one segment, 24h": "/models/model-2?segment=seg-3&window=24h",
        "model page, model-wide, 7d": "/models/model-3?window=7d",
        "decision report": f"/reports/{report_id}",
    }
    lines = [
        f"**{label}**: {stored:,} sketch-bucket rows (populated in {populate_s:.0f} s); "
        f"evaluation that published the snapshot: {evaluate_s:.1f} s.",
        "",
        "| page | cold median ms | cold max ms | warm median ms | warm max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    with TestClient(daemon.app) as client:
        for name, path in paths.items():
            client.get(path)  # first use: templates compiled, fonts loaded
            charts = daemon.app.state.charts
            cold = timed(lambda p=path: client.get(p).status_code, repeat, True, charts)
            warm = timed(lambda p=path: client.get(p).status_code, repeat, False, charts)
            lines.append(f"| {name} | {cold[0]:.0f} | {cold[1]:.0f} | {warm[0]:.0f} | {warm[1]:.0f} |")
            print(lines[-1], flush=True)
    engine.dispose()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=30, help="predictions per segment per 5-minute bucket")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory(prefix="calmon-pages-bench-") as tmp:
        sections += run(f"sqlite:///{Path(tmp) / 'pages.db'}", "SQLite", args.rate, args.repeat)
    if not args.skip_postgres:
        cluster = pgcluster.start_cluster()
        try:
            sections += ["", *run(cluster.url(), "PostgreSQL", args.rate, args.repeat)]
        finally:
            cluster.destroy()
    body = "\n".join(
        [
            f"### Status page ({time.strftime('%Y-%m-%d')}): {MODELS} models x {SEGMENTS} segments, "
            f"{DAYS} days of {BUCKET // 60}-minute buckets, {args.rate} predictions per segment per bucket",
            "",
            f"Machine: {machine()}",
            "",
            "In-process requests through the ASGI app (routing, SQL, templates, charts). Cold: the chart "
            "cache emptied before each request (the first view after an evaluation); warm: a second view "
            f"of the same evaluation. {args.repeat} requests each.",
            "",
            *sections,
        ]
    )
    print(body)
    if args.out:
        write_section(args.out, "pages", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
