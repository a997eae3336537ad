"""Ingest benchmark: 200k predictions over HTTP in batches of 1000 to a running daemon, then feedback
for all of them, on SQLite and on PostgreSQL; beside it, the raw executemany insert rate of the same
rows into the same kind of database, reported as a ratio.

Run: `make bench` (or `python benchmarks/ingest.py --out benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from monitor.store.schema import predictions  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402

BATCH = 1000


def make_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = time.time()
    return [
        {
            "model": "bench-model",
            "id": f"p{i:07d}",
            "segment": f"seg-{i % 5}",
            "confidence": rng.random(),
            "ts": now - rng.random() * 86400,
            "predicted": str(rng.randrange(10)),
        }
        for i in range(n)
    ]


def bodies(key: str, records: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps({key: records[i : i + BATCH]}) for i in range(0, len(records), BATCH)]


def send_all(url: str, payloads: list[bytes], clients: int) -> float:
    """Send every payload with ``clients`` keep-alive connections in parallel; seconds taken."""
    queue = list(reversed(payloads))
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    payload = queue.pop()
                response = client.post(url, content=payload)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
    return elapsed


def raw_insert_rate(url: str, records: list[dict[str, Any]]) -> float:
    """Rows/s of plain SQLAlchemy executemany inserts of the same rows, one transaction per batch."""
    engine = create_store_engine(url)
    upgrade(engine)
    now = time.time()
    rows = [
        {
            "model": r["model"],
            "prediction_id": r["id"],
            "segment": r["segment"],
            "ts": r["ts"],
            "received_at": now,
            "input_kind": "confidence",
            "raw_confidence": r["confidence"],
            "predicted": r["predicted"],
            "vector": None,
            "calibrated_confidence": r["confidence"],
            "calibrator_version": "identity",
        }
        for r in records
    ]
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        with engine.begin() as conn:
            conn.execute(insert(predictions), rows[i : i + BATCH])
    elapsed = time.perf_counter() - start
    engine.dispose()
    return len(rows) / elapsed


def promote_isotonic(url: str) -> None:
    """An active non-identity calibrator (isotonic, 100 thresholds) for every segment of the bench model."""
    from monitor.calibration.calibrators import IsotonicCalibration
    from monitor.store import calibrators as registry

    engine = create_store_engine(url)
    upgrade(engine)
    x = np.linspace(0.0, 1.0, 100)
    with engine.begin() as conn:
        record = registry.create(
            conn, "bench-model", "*", IsotonicCalibration(x.tolist(), (x**1.5).tolist()), 0.0
        )
        registry.activate(conn, record.id, 0.0, "benchmark")
    engine.dispose()


def run_backend(
    name: str,
    url_factory: Callable[[str], str],
    n: int,
    clients: int,
    workdir: Path,
    calibrated: bool = False,
) -> dict[str, Any]:
    records = make_records(n)
    if calibrated:
        promote_isotonic(url_factory("daemon"))
    feedback = [{"model": r["model"], "id": r["id"], "correct": random.random() < 0.7} for r in records]
    daemon = Daemon(
        url_factory("daemon"),
        env={"CALMON_LOGGING__ACCESS_LOG": "false", "CALMON_LOGGING__LEVEL": "WARNING"},
        log_path=workdir / f"{name}-daemon.log",
    )
    try:
        daemon.wait_healthy()
        pred_seconds = send_all(f"{daemon.base_url}/v1/predictions", bodies("predictions", records), clients)
        fb_seconds = send_all(f"{daemon.base_url}/v1/feedback", bodies("feedback", feedback), clients)
        model = httpx.get(f"{daemon.base_url}/v1/models/bench-model", timeout=120).json()
        assert model["predictions"] == n and model["labelled"] == n, model
        served = {c["version"] for c in model["calibrators"]}
        assert served == ({"1"} if calibrated else set()), served
    finally:
        daemon.stop()
    raw = raw_insert_rate(url_factory("raw"), records)
    return {
        "backend": name,
        "predictions_per_s": n / pred_seconds,
        "feedback_per_s": n / fb_seconds,
        "raw_insert_per_s": raw,
        "ratio": (n / pred_seconds) / raw,
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="calmon-bench-") as tmp:
        workdir = Path(tmp)
        results.append(
            run_backend(
                "SQLite (WAL, synchronous=FULL)",
                lambda tag: f"sqlite:///{workdir / (tag + '.db')}",
                args.n,
                args.clients,
                workdir,
            )
        )
        results.append(
            run_backend(
                "SQLite, isotonic calibrator active",
                lambda tag: f"sqlite:///{workdir / ('cal-' + tag + '.db')}",
                args.n,
                args.clients,
                workdir,
                calibrated=True,
            )
        )
        if not args.skip_postgres:
            cluster = pgcluster.start_cluster(durable=True)
            try:
                from sqlalchemy import create_engine, text

                admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
                with admin.connect() as conn:
                    for tag in ("daemon", "raw"):
                        conn.execute(text(f"CREATE DATABASE {tag}"))
                admin.dispose()
                results.append(
                    run_backend("PostgreSQL (fsync on)", cluster.url, args.n, args.clients, workdir)
                )
            finally:
                cluster.destroy()

    lines = [
        "| backend | predictions/s (HTTP, end to end) | feedback/s (HTTP) "
        "| raw executemany inserts/s | e2e / raw |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['predictions_per_s']:,.0f} | {r['feedback_per_s']:,.0f} | "
            f"{r['raw_insert_per_s']:,.0f} | {r['ratio']:.2f} |"
        )
    identity, calibrated = results[0]["predictions_per_s"], results[1]["predictions_per_s"]
    lines.append("")
    lines.append(
        f"Calibrator at ingest (isotonic, 100 thresholds) vs identity, same run: "
        f"{(1 - calibrated / identity) * 100:+.1f}% slower (target: at most 10%)."
    )
    report = "\n".join(lines)
    header = (
        f"### Ingest ({time.strftime('%Y-%m-%d')}): {args.n:,} predictions, batches of {BATCH}, "
        f"{args.clients} client connections\n\nMachine: {machine()}\n\n"
    )
    print(header + report)
    if args.out:
        write_section(args.out, "ingest", header + report)
    return 0


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between markers so each benchmark keeps its own results."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
