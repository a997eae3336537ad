"""Evaluation benchmark: N stored labelled predictions across 10 models x 5 segments over 7 days.

In one run: the aggregation of the raw rows into sketch buckets; one evaluation tick over the
windows 1h/24h/7d (the first, which loads the rolling windows from the buckets, and a steady-state
one after 1000 new labelled predictions); the same windows recomputed from raw rows with the
calibration core, as a ratio; then a real daemon on the same database: ``/metrics`` scrape latency
p50/p99 and the daemon's peak RSS.

Run: `make bench` (or `python benchmarks/evaluation.py --out benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.app import build  # noqa: E402
from monitor.calibration import metrics as core  # noqa: E402
from monitor.config import load_settings  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.insertion import largest_pk, queue_rows_after  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402

MODELS, SEGMENTS, DAY = 10, 5, 86400.0
INSERT = (
    "INSERT INTO predictions (model, prediction_id, segment, ts, received_at, input_kind, raw_confidence, "
    "calibrated_confidence, calibrator_version, correct, labelled_at) "
    "VALUES (?, ?, ?, ?, ?, 'confidence', ?, ?, 'identity', ?, ?)"
)


def populate(url: str, rows: int, now: float, chunk: int = 200_000) -> float:
    """Labelled rows straight through the driver (the benchmark is about evaluation, not ingest)."""
    engine = create_store_engine(url)
    upgrade(engine)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        model = rng.integers(0, MODELS, n)
        segment = rng.integers(0, SEGMENTS, n)
        ts = now - rng.random(n) * 7 * DAY
        p = rng.beta(6, 2, n)
        correct = rng.random(n) < p - 0.1 * (model % 3)
        data = [
            (
                f"model-{model[i]}",
                f"p{start + i}",
                f"seg-{segment[i]}",
                float(ts[i]),
                now,
                float(p[i]),
                float(p[i]),
                bool(correct[i]),
                now,
            )
            for i in range(n)
        ]
        with engine.begin() as conn:
            last = largest_pk(conn)
            conn.exec_driver_sql(INSERT, data)
            queue_rows_after(conn, last)  # on the fold's work list, as ingest puts them
    engine.dispose()
    return time.perf_counter() - started


def raw_recompute(url: str, now: float, windows: dict[str, float], ece_bins: int) -> float:
    """The same windows from raw rows: fetch each window's rows and apply the calibration core."""
    engine = create_store_engine(url)
    started = time.perf_counter()
    with engine.connect() as conn:
        for seconds in windows.values():
            cursor = conn.exec_driver_sql(
                "SELECT model, segment, raw_confidence, correct FROM predictions "
                "WHERE ts >= ? AND correct IS NOT NULL",
                (now - seconds,),
            )
            rows = cursor.fetchall()
            model = np.array([r[0] for r in rows])
            segment = np.array([r[1] for r in rows])
            p = np.array([r[2] for r in rows], dtype=float)
            y = np.array([r[3] for r in rows], dtype=float)
            for m in np.unique(model):
                in_model = model == m
                for s in [*np.unique(segment[in_model]), None]:
                    chosen = in_model if s is None else in_model & (segment == s)
                    core.expected_calibration_error(p[chosen], y[chosen], ece_bins)
                    core.ece_bootstrap_ci(p[chosen], y[chosen], ece_bins, n_boot=100)
                    core.brier_score(p[chosen], y[chosen])
                    core.spiegelhalter_z(p[chosen], y[chosen])
    engine.dispose()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--bucket-seconds", type=int, default=3600)
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    now = time.time()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="calmon-eval-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        insert_s = populate(url, args.rows, now)
        settings = load_settings(
            None, database_url=url, evaluation={"bucket_seconds": args.bucket_seconds, "bootstrap_draws": 500}
        )
        engine = create_store_engine(url)
        built = build(settings, clock=lambda: now, instance_id="bench", engine=engine)
        scheduler = built.scheduler
        started = time.perf_counter()
        folded = scheduler.tick.fold(now)
        aggregate_s = time.perf_counter() - started
        scheduler.renew_lease()
        started = time.perf_counter()
        snapshot = scheduler.evaluate_once()
        first_tick = time.perf_counter() - started
        # steady state: 1000 new labelled predictions arrive, then the next tick
        extra = [
            (
                f"model-{i % MODELS}",
                f"new{i}",
                f"seg-{i % SEGMENTS}",
                now - 10.0,
                now,
                0.8,
                0.8,
                i % 2 == 0,
                now,
            )
            for i in range(1000)
        ]
        with engine.begin() as conn:
            last = largest_pk(conn)
            conn.exec_driver_sql(INSERT, extra)
            queue_rows_after(conn, last)  # on the fold's work list, as ingest puts them
        ticks = []
        for _ in range(5):
            started = time.perf_counter()
            snapshot = scheduler.evaluate_once()
            ticks.append(time.perf_counter() - started)
        tick = float(np.median(ticks))
        renders = []
        for _ in range(5):  # the tick's last step: rendering the snapshot part of /metrics
            started = time.perf_counter()
            built.exposition.refresh()
            renders.append(time.perf_counter() - started)
        render = float(np.median(renders))
        engine.dispose()
        windows = {"1h": 3600.0, "24h": DAY, "7d": 7 * DAY}
        raw_s = raw_recompute(url, now, windows, settings.evaluation.ece_bins)

        config = Path(tmp) / "calmon.yaml"
        config.write_text(
            f"evaluation: {{interval_seconds: 30, bucket_seconds: {args.bucket_seconds}}}\n"
            "logging: {access_log: false, level: WARNING}\n"
        )
        daemon = Daemon(url, config=config, log_path=Path(tmp) / "daemon.log")
        try:
            daemon.wait_healthy(120)
            deadline = time.monotonic() + 300
            while (
                time.monotonic() < deadline
                and "calmon_expected_calibration_error{"
                not in httpx.get(f"{daemon.base_url}/metrics", timeout=30).text
            ):
                time.sleep(1)
            latencies = []
            with httpx.Client(timeout=30) as client:
                for _ in range(args.scrapes):
                    started = time.perf_counter()
                    body = client.get(f"{daemon.base_url}/metrics").content
                    latencies.append(time.perf_counter() - started)
            status = Path(f"/proc/{daemon.process.pid}/status").read_text()
            peak_rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            daemon.stop()
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000

    series = len(snapshot.stats)
    lines = [
        "| what | result | target |",
        "|---|---:|---|",
        f"| labelled predictions stored | {args.rows:,} (10 models x 5 segments, 7 days) | |",
        f"| fold a raw backlog into sketch buckets (one-off) | {aggregate_s:.1f} s for {folded:,} rows | |",
        f"| evaluation tick, steady state (1h/24h/7d, {series} series) | {tick * 1000:.0f} ms | < 1 s |",
        f"| of which: rendering the snapshot part of `/metrics` | {render * 1000:.0f} ms | |",
        f"| first tick (loads the rolling windows from the buckets) | {first_tick:.2f} s | |",
        f"| same windows recomputed from raw rows | {raw_s:.1f} s; ratio {raw_s / tick:.0f}x | >= 20x |",
        f"| `/metrics` scrape ({len(body) / 1024:.0f} KiB) p50 / p99 | {p50:.1f} ms / {p99:.1f} ms "
        "| p99 < 50 ms |",
        f"| daemon peak RSS | {int(peak_rss) / 1024:.0f} MiB | |",
    ]
    header = (
        f"### Evaluation ({time.strftime('%Y-%m-%d')}): SQLite, bucket_seconds={args.bucket_seconds}, "
        f"fine_bins=120, ece_bins=15, bootstrap 500 draws\n\nMachine: {machine()}\n\n"
        f"Raw rows inserted in {insert_s:.0f} s (driver executemany, outside the figures).\n\n"
    )
    report = header + "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, "evaluation", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
