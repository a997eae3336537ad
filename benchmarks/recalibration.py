"""Recalibration benchmark: one full run (select rows, time split, all five candidates, the gate
with its paired bootstrap, the report, the writes) at 100k and 1M labelled rows on SQLite.

The ingest-with-a-calibrator figure lives in benchmarks/ingest.py (same run as identity).
Run: `make bench` (or `python benchmarks/recalibration.py --out benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.config import load_settings  # noqa: E402
from monitor.recalibration.job import recalibrate  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.insertion import largest_pk, queue_rows_after  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402

INSERT = (
    "INSERT INTO predictions (model, prediction_id, segment, ts, received_at, input_kind, raw_confidence, "
    "calibrated_confidence, calibrator_version, correct, labelled_at) "
    "VALUES (?, ?, 'default', ?, ?, 'confidence', ?, ?, 'identity', ?, ?)"
)


def populate(url: str, rows: int, now: float) -> None:
    engine = create_store_engine(url)
    upgrade(engine)
    rng = np.random.default_rng(0)
    q = rng.uniform(0.3, 0.97, rows)
    p = 1.0 / (1.0 + np.exp(-2.5 * np.log(q / (1 - q))))  # overconfident
    correct = rng.random(rows) < q
    ts = now - rng.random(rows) * 86400
    for start in range(0, rows, 200_000):
        end = min(rows, start + 200_000)
        data = [
            ("bench", f"r{i}", float(ts[i]), now, float(p[i]), float(p[i]), bool(correct[i]), now)
            for i in range(start, end)
        ]
        with engine.begin() as conn:
            last = largest_pk(conn)
            conn.exec_driver_sql(INSERT, data)
            queue_rows_after(conn, last)  # on the fold's work list, as ingest puts them
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = ["| labelled rows | full run | outcome | chosen | validation rows |", "|---:|---:|---|---|---:|"]
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="calmon-recal-bench-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'r.db'}"
            now = time.time()
            populate(url, size, now)
            settings = load_settings(None, database_url=url, recalibration={"max_rows": size})
            engine = create_store_engine(url)
            started = time.perf_counter()
            outcome = recalibrate(engine, settings, "bench", now=now)
            elapsed = time.perf_counter() - started
            engine.dispose()
        lines.append(
            f"| {size:,} | {elapsed:.1f} s | {outcome.outcome} | {outcome.report.get('chosen')} | "
            f"{outcome.report['data']['validation_rows']:,} |"
        )
    header = (
        f"### Recalibration ({time.strftime('%Y-%m-%d')}): SQLite, all 5 candidates, gate with "
        f"500 paired bootstrap draws, report written\n\nMachine: {machine()}\n\n"
    )
    report = header + "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, "recalibration", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
