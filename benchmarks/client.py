"""Client benchmark: what ``calmon_client`` costs the app's thread, and what it sustains end to end.

1. Per-call overhead of ``log_prediction`` on the app's thread, each call timed with
   ``perf_counter``, while the background sender delivers to a real daemon (SQLite), for three
   confidence forms; and with calmon down (the sender retrying), to show the app never waits on it.
   Garbage-collection pauses are recorded with ``gc.callbacks`` and reported apart.
2. Sustained throughput: the app logs predictions (and a label for every other one) as fast as it
   can, then ``flush()``; records per second from the first call to the flush returning, against a
   real daemon on SQLite and on PostgreSQL, beside the same records posted directly in batches of
   500 over one connection (the ceiling for one sender) in the same run.

Run: `python benchmarks/client.py --out benchmarks/RESULTS.md` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calmon_client import Client, RetryPolicy  # noqa: E402

from benchmarks.ingest import machine, write_section  # noqa: E402
from tests.support import pgcluster  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.gcpauses import GcPauses  # noqa: E402

FORMS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "confidence": lambda r: {"confidence": r.uniform(0.3, 1.0)},
    "token_logprobs (12)": lambda r: {"token_logprobs": [-r.expovariate(20.0) for _ in range(12)]},
    "probs (4) + predicted": lambda r: {"probs": [0.1, 0.2, 0.3, 0.4], "predicted": "d"},
}
QUIET = {"CALMON_LOGGING__ACCESS_LOG": "false", "CALMON_LOGGING__LEVEL": "WARNING"}


def quantile(values: list[float], q: float) -> float:
    """Microseconds."""
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e6


def overhead(url: str, form: str, n: int) -> dict[str, Any]:
    """Microseconds per call on the app's thread."""
    rng = random.Random(1)
    fields = [FORMS[form](rng) for _ in range(n)]
    client = Client(
        url, max_queue=n + 1, retry=RetryPolicy(initial=0.05, max_backoff=0.5), flush_at_exit=None
    )
    took: list[float] = []
    starts: list[float] = []
    pauses = GcPauses()
    clock = time.perf_counter
    try:
        for i in range(n):
            t0 = clock()
            client.log_prediction("bench", f"{form[:4]}-{i}", **fields[i])
            took.append(clock() - t0)
            starts.append(t0)
    finally:
        pauses.stop()
        client.close(0.5 if "127.0.0.1:9" in url else 120)
    in_gc = [pauses.overlap(s, s + t) > 0 for s, t in zip(starts, took, strict=True)]
    outside = [t for t, g in zip(took, in_gc, strict=True) if not g]
    return {
        "form": form,
        "median": quantile(took, 0.5),
        "p99": quantile(took, 0.99),
        "p999": quantile(took, 0.999),
        "max": max(took) * 1e6,
        "max_outside_gc": max(outside) * 1e6,
        "gc_calls": sum(in_gc),
    }


def throughput(url: str, n: int, model: str = "tput") -> dict[str, float]:
    rng = random.Random(2)
    confidences = [rng.uniform(0.3, 1.0) for _ in range(n)]
    client = Client(url, max_queue=2 * n, flush_at_exit=None)
    start = time.perf_counter()
    for i in range(n):
        client.log_prediction(model, f"c{i}", confidence=confidences[i], segment="s")
        if i % 2 == 0:
            client.log_feedback(model, f"c{i}", correct=confidences[i] > 0.6)
    logged = time.perf_counter() - start
    assert client.flush(600)
    seconds = time.perf_counter() - start
    stats = client.stats()
    client.close()
    assert stats.delivered == n + n // 2 and stats.dropped == 0 and stats.rejected == 0, stats
    direct = direct_rate(url, confidences, f"direct-{model}")
    return {"records_per_s": (n + n // 2) / seconds, "app_seconds": logged, "direct_per_s": direct}


def direct_rate(url: str, confidences: list[float], model: str = "direct") -> float:
    """The same records posted in batches of 500 over one connection, no client package."""
    n = len(confidences)
    preds = [
        {"model": model, "id": f"d{i}", "segment": "s", "confidence": c, "ts": time.time()}
        for i, c in enumerate(confidences)
    ]
    labels = [
        {"model": "direct", "id": f"d{i}", "correct": c > 0.6}
        for i, c in enumerate(confidences)
        if i % 2 == 0
    ]
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as http:
        for key, path, records in (
            ("predictions", "/v1/predictions", preds),
            ("feedback", "/v1/feedback", labels),
        ):
            for k in range(0, len(records), 500):
                body = orjson.dumps({key: records[k : k + 500]})
                assert (
                    http.post(path, content=body, headers={"content-type": "application/json"}).status_code
                    == 200
                )
    return (n + n // 2) / (time.perf_counter() - start)


def postgres_rates(url: str, database_url: str, n: int) -> list[tuple[str, dict[str, float]]]:
    """A fresh database, then the same after ANALYZE: on a never-analysed ``predictions`` table
    PostgreSQL's cached generic plan for the feedback lookup scans every row of the model (see
    RESULTS.md), until autovacuum's first ANALYZE (its naptime is a minute)."""
    from sqlalchemy import create_engine, text

    fresh = throughput(url, n, "tput")
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE predictions"))
        conn.execute(text("ANALYZE pending_feedback"))
    engine.dispose()
    time.sleep(1.0)
    return [
        ("PostgreSQL (fsync on), fresh database", fresh),
        ("PostgreSQL (fsync on), after ANALYZE", throughput(url, n, "tput2")),
    ]


def with_daemon(url: str, workdir: Path, name: str, work: Callable[[str], Any]) -> Any:
    daemon = Daemon(url, env=QUIET, log_path=workdir / f"{name}.log")
    try:
        daemon.wait_healthy()
        return work(daemon.base_url)
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200_000, help="calls per overhead run")
    parser.add_argument("--throughput-n", type=int, default=100_000, help="predictions per throughput run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()

    rows, rates = [], []
    with tempfile.TemporaryDirectory(prefix="calmon-bench-client-") as tmp:
        workdir = Path(tmp)
        for form in FORMS:
            rows.append(
                (
                    "delivering to calmon (SQLite)",
                    with_daemon(
                        f"sqlite:///{workdir / 'o.db'}",
                        workdir,
                        "o",
                        lambda u, f=form: overhead(u, f, args.n),
                    ),
                )
            )
        rows.append(("calmon down (sender retrying)", overhead("http://127.0.0.1:9", "confidence", args.n)))
        rates.append(
            (
                "SQLite",
                with_daemon(
                    f"sqlite:///{workdir / 't.db'}", workdir, "t", lambda u: throughput(u, args.throughput_n)
                ),
            )
        )
        if not args.skip_postgres:
            cluster = pgcluster.start_cluster(durable=True)
            try:
                rates += with_daemon(
                    cluster.url(),
                    workdir,
                    "pg",
                    lambda u: postgres_rates(u, cluster.url(), args.throughput_n),
                )
            finally:
                cluster.destroy()

    lines = [
        f"Per call on the app's thread ({args.n:,} calls each, µs):",
        "",
        "| while | form | median | p99 | p99.9 | max outside GC | max (a full GC of the app's heap) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for where, r in rows:
        lines.append(
            f"| {where} | {r['form']} | {r['median']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | "
            f"{r['max_outside_gc']:,.0f} | {r['max']:,.0f} |"
        )
    lines += [
        "",
        f"Sustained through the client ({args.throughput_n:,} predictions + a label for every other one):",
        "",
        "| daemon on | records/s, first call to flush() done | app busy logging (s) "
        "| same records posted directly, batches of 500, one connection |",
        "|---|---:|---:|---:|",
    ]
    for backend, r in rates:
        lines.append(
            f"| {backend} | {r['records_per_s']:,.0f} | {r['app_seconds']:.2f} | {r['direct_per_s']:,.0f} |"
        )
    header = f"### Client ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}\n\n"
    report = header + "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, "client", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
