"""Scale-out on PostgreSQL (issue 16, part 4): 1, 2 and 4 replicas of the daemon (one leader, elected by
the lease) on one database behind a round-robin client; then the leader's tick on 10M rows and 1,000
series.

**Ingest.** For each replica count a fresh database, the replicas started with the default
configuration (the leader folds and evaluates as it would in production), and ``--predictions``
predictions sent in batches of ``--batch`` over ``--connections`` keep-alive connections, request
*i* to replica *i mod N*. Recorded: predictions/s, request latency p50/p99, and the CPU seconds
the replicas, the PostgreSQL server and the client each spent (from ``/proc``), per 10,000
predictions: what to provision, independent of how many cores this machine happens to have.

**Tick.** ``--tick-rows`` labelled predictions over 20 models x 50 segments (1,000 series, within
the default segment cap) and 7 days, inserted through the driver (not timed), folded, then the
leader's evaluation tick (fold of 1,000 new labelled predictions, windows 1h/24h/7d, detectors,
snapshot, the exposition rendered) timed over 5 runs. The backlog is folded as after an import, by
``calmon rebuild-aggregates`` (the tick's fold of a 7-day backlog at 1,000 series also writes the
drift evidence and the hourly rollup per batch: minutes per million rows on PostgreSQL, measured).

Run: ``python benchmarks/scaleout.py --out benchmarks/RESULTS.md`` (about 20 minutes with the 10M-row
tick; ``--tick-rows 0`` skips it).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from benchmarks.ingest import machine, make_records, write_section  # noqa: E402
from monitor.app import build  # noqa: E402
from monitor.config import load_settings  # noqa: E402
from monitor.store.aggregates import rebuild, tidy_after_rebuild  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the given processes so far (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICKS


def create_database(cluster: pgcluster.PgCluster, name: str) -> str:
    admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return cluster.url(name)


def send_round_robin(urls: list[str], bodies: list[bytes], connections: int) -> list[float]:
    """Every body, request i to urls[i % len(urls)], over ``connections`` threads; each latency."""
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as client:
            while True:
                i = next(counter)
                if i >= len(bodies):
                    return
                started = time.perf_counter()
                response = client.post(f"{urls[i % len(urls)]}/v1/predictions", content=bodies[i])
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return latencies


def ingest_run(
    cluster: pgcluster.PgCluster, replicas: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    url = create_database(cluster, f"scale_{replicas}")
    engine = create_store_engine(url)
    upgrade(engine)  # once, before the replicas race to
    engine.dispose()
    records = make_records(args.predictions, seed=replicas)
    bodies = [
        orjson.dumps({"predictions": records[i : i + args.batch]}) for i in range(0, len(records), args.batch)
    ]
    env = {"CALMON_LOGGING__ACCESS_LOG": "false", "CALMON_LOGGING__LEVEL": "WARNING"}
    daemons = [
        Daemon(url, env=env, log_path=workdir / f"replica-{replicas}-{k}.log") for k in range(replicas)
    ]
    try:
        for daemon in daemons:
            daemon.wait_healthy(60)
        pids = [d.process.pid for d in daemons]
        server = cluster.processes()
        before = (cpu_seconds(pids), cpu_seconds(server), time.process_time())
        started = time.perf_counter()
        latencies = send_round_robin([d.base_url for d in daemons], bodies, args.connections)
        elapsed = time.perf_counter() - started
        server = sorted(set(server) | set(cluster.processes()))
        after = (cpu_seconds(pids), cpu_seconds(server), time.process_time())
    finally:
        for daemon in daemons:
            daemon.stop()
    per_10k = 10_000 / args.predictions
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {
        "replicas": replicas,
        "rate": args.predictions / elapsed,
        "p50": p50,
        "p99": p99,
        "replica_cpu": (after[0] - before[0]) * per_10k,
        "db_cpu": (after[1] - before[1]) * per_10k,
        "client_cpu": (after[2] - before[2]) * per_10k,
        "busy": (after[0] - before[0] + after[1] - before[1] + after[2] - before[2]) / elapsed,
    }


LABELLED = (  # the rows go on the fold's work list as calmon's ingest puts them
    "WITH landed AS (INSERT INTO predictions (model, prediction_id, segment, ts, input_kind, raw_confidence, "
    "calibrated_confidence, calibrator_version, received_at, correct, labelled_at) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], %s::float8[], %s::float8[], %s::text[], "
    "%s::float8[], %s::bool[], %s::float8[]) RETURNING pk) "
    "INSERT INTO fold_queue (pk, fresh) SELECT pk, true FROM landed"
)


def labelled_rows(engine: Any, model: list[str], ids: list[str], segment: list[str], ts: list[float],
                  p: list[float], correct: list[bool], now: float) -> None:  # fmt: skip
    n = len(model)
    columns = (
        model,
        ids,
        segment,
        ts,
        ["confidence"] * n,
        p,
        p,
        ["identity"] * n,
        [now] * n,
        correct,
        [now] * n,
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(LABELLED, columns)


def populate(url: str, rows: int, now: float, models: int, segments: int) -> None:
    """Labelled rows straight through the driver (the tick is measured, not the ingest)."""
    engine = create_store_engine(url)
    upgrade(engine)
    rng = np.random.default_rng(0)
    for start in range(0, rows, 200_000):
        n = min(200_000, rows - start)
        model = rng.integers(0, models, n)
        segment = rng.integers(0, segments, n)
        ts = now - rng.random(n) * 7 * 86400.0
        p = rng.beta(6, 2, n)
        correct = rng.random(n) < p - 0.05
        names = [f"model-{m}" for m in model]
        ids = [f"p{start + i}" for i in range(n)]
        segs = [f"seg-{s}" for s in segment]
        labelled_rows(engine, names, ids, segs, ts.tolist(), p.tolist(), correct.tolist(), now)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE predictions")
    engine.dispose()


def tick_run(cluster: pgcluster.PgCluster, rows: int) -> dict[str, float]:
    url = create_database(cluster, "scale_tick")
    now = time.time()
    began = time.perf_counter()
    populate(url, rows, now, models=20, segments=50)
    print(f"populated {rows:,} rows in {time.perf_counter() - began:.0f} s", flush=True)
    settings = load_settings(None, database_url=url, evaluation={"bootstrap_draws": 500})
    engine = create_store_engine(url, settings.database)
    built = build(settings, clock=lambda: now, instance_id="bench", engine=engine)
    scheduler = built.scheduler
    started = time.perf_counter()
    cfg = settings.evaluation
    with engine.begin() as conn:  # as `calmon rebuild-aggregates` after an import: no drift evidence
        rebuild(
            conn, cfg.bucket_seconds, cfg.fine_bins, cap_of=settings.max_segments_for, hour_bins=cfg.ece_bins
        )
    tidy_after_rebuild(engine)
    fold_s = time.perf_counter() - started
    scheduler.renew_lease()
    started = time.perf_counter()
    snapshot = scheduler.evaluate_once()
    first = time.perf_counter() - started
    ticks = []
    for k in range(5):
        labelled_rows(engine, [f"model-{i % 20}" for i in range(1000)], [f"new{k}-{i}" for i in range(1000)],
                      [f"seg-{i % 50}" for i in range(1000)], [now - 10.0] * 1000, [0.8] * 1000,
                      [i % 5 != 0 for i in range(1000)], now)  # fmt: skip
        started = time.perf_counter()
        snapshot = scheduler.evaluate_once()
        ticks.append(time.perf_counter() - started)
    engine.dispose()
    series = len({(s.model, s.segment) for s in snapshot.stats})
    return {"fold": fold_s, "first": first, "tick": float(np.median(ticks)), "series": series}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--tick-rows", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cluster = pgcluster.start_cluster(durable=True)
    results = []
    tick: dict[str, float] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="calmon-scale-") as tmp:
            for replicas in (int(r) for r in args.replicas.split(",") if r):
                r = ingest_run(cluster, replicas, args, Path(tmp))
                results.append(r)
                print(r, flush=True)
        if args.tick_rows:
            tick = tick_run(cluster, args.tick_rows)
            print(tick, flush=True)
    finally:
        cluster.destroy()
    lines = [
        f"| replicas | predictions/s | request p50 | request p99 | CPU-s per 10k predictions: replicas "
        f"| PostgreSQL | client | cores busy (of {os.cpu_count()}) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['replicas']} | {r['rate']:,.0f} | {r['p50']:.0f} ms | {r['p99']:.0f} ms "
            f"| {r['replica_cpu']:.2f} | {r['db_cpu']:.2f} | {r['client_cpu']:.2f} | {r['busy']:.2f} |"
        )
    report = (
        f"### Scale-out on PostgreSQL ({time.strftime('%Y-%m-%d')}): {args.predictions:,} predictions in "
        f"batches of {args.batch}, {args.connections} connections, round robin\n\n"
        f"Machine: {machine()}; PostgreSQL with fsync on, on the same machine.\n\n" + "\n".join(lines)
    )
    if tick is not None:
        report += (
            f"\n\nLeader's tick, {args.tick_rows:,} labelled rows, {int(tick['series']):,} series "
            f"(20 models x 50 segments, 7 days): `rebuild-aggregates` of the backlog {tick['fold']:.0f} s "
            f"(one-off), first tick {tick['first']:.1f} s, steady tick (1,000 new labelled predictions) "
            f"**{tick['tick'] * 1000:.0f} ms** (median of 5)."
        )
    print(report)
    if args.out:
        write_section(args.out, "scaleout", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
