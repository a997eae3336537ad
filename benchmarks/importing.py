"""``calmon import`` of a large history (issue 16), against a raw insert of the same rows in the same run.

A Parquet file of ``--rows`` predictions (10 models x 5 segments over the last 6 days, confidences,
ids in arrival order) and one of labels for half of them are written first (not timed). Then, each
into a fresh migrated store:

* **raw insert**: the same rows, as tuples built beforehand (not timed), through the driver's
  executemany of a plain INSERT with all 11 columns bound (on PostgreSQL the API's ``unnest``
  statement), 100,000 rows a transaction: the reference the issue names;
* **calmon import**: ``monitor.bulk.importer.import_history`` end to end: read the Parquet file,
  check every row by the API's rules, score, insert, commit per chunk;
* **resume**: the same import again (every row already stored: what re-running an interrupted
  import costs);
* **labels**: the label file into the imported store.

Run: ``python benchmarks/importing.py --rows 10000000 --out benchmarks/RESULTS.md`` (SQLite; add
``--postgres`` for a throwaway PostgreSQL cluster too).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.bulk.importer import import_history  # noqa: E402
from monitor.config import Settings  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.insertion import PG_INSERT  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from monitor.store.schema import predictions  # noqa: E402

CHUNK = 100_000
# The reference: every column bound, as the API's SQLite insert bound them before it bound only what
# varies (store.insertion); PostgreSQL's reference is the API's own unnest statement.
SQLITE_INSERT = (
    "INSERT INTO predictions (model, prediction_id, segment, ts, input_kind, raw_confidence, predicted, "
    "vector, calibrated_confidence, calibrator_version, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, prediction_id) DO NOTHING"
)
MODELS = 10
SEGMENTS = 5


def columns(n: int, now: float, seed: int = 7) -> Iterator[dict[str, np.ndarray]]:
    """The history in 1M-row parts (bounded memory): ids in arrival order, times sorted."""
    rng = np.random.default_rng(seed)
    part = 1_000_000
    span = 6 * 86400.0
    t0 = now - span - 3600.0
    for start in range(0, n, part):
        size = min(part, n - start)
        yield {
            "model": rng.integers(0, MODELS, size),
            "id": np.arange(start, start + size),
            "segment": rng.integers(0, SEGMENTS, size),
            "ts": np.sort(rng.uniform(t0 + span * start / n, t0 + span * (start + size) / n, size)),
            "confidence": rng.beta(6.0, 1.5, size),
        }


def write_files(n: int, now: float, directory: Path) -> tuple[Path, Path]:
    history, labels = directory / "history.parquet", directory / "labels.parquet"
    rng = np.random.default_rng(11)
    prediction_schema = pa.schema(
        [("model", pa.string()), ("id", pa.string()), ("segment", pa.string()), ("ts", pa.float64()),
         ("confidence", pa.float64())]
    )  # fmt: skip
    label_schema = pa.schema(
        [("model", pa.string()), ("id", pa.string()), ("correct", pa.bool_()), ("labelled_at", pa.float64())]
    )
    with (
        pq.ParquetWriter(history, prediction_schema) as out,
        pq.ParquetWriter(labels, label_schema) as label_out,
    ):
        for part in columns(n, now):
            model = np.array([f"model-{m}" for m in range(MODELS)], dtype=object)[part["model"]]
            ids = np.char.add("p", part["id"].astype(str)).astype(object)
            segment = np.array([f"seg-{s}" for s in range(SEGMENTS)], dtype=object)[part["segment"]]
            out.write_table(
                pa.table({"model": model, "id": ids, "segment": segment, "ts": part["ts"],
                          "confidence": part["confidence"]}, schema=prediction_schema)
            )  # fmt: skip
            chosen = rng.random(len(ids)) < 0.5
            correct = rng.random(len(ids)) < part["confidence"]
            label_out.write_table(
                pa.table({"model": model[chosen], "id": ids[chosen], "correct": correct[chosen],
                          "labelled_at": part["ts"][chosen] + 1800.0}, schema=label_schema)
            )  # fmt: skip
    return history, labels


def raw_insert(url: str, history: Path, now: float) -> float:
    """The driver's executemany of the API's INSERT, rows prepared outside the timing."""
    engine = create_store_engine(url)
    upgrade(engine)
    postgres = engine.dialect.name == "postgresql"
    elapsed = 0.0
    for batch in pq.ParquetFile(history).iter_batches(batch_size=CHUNK):
        m, i, s = (batch.column(name).to_pylist() for name in ("model", "id", "segment"))
        ts, c = batch.column("ts").to_pylist(), batch.column("confidence").to_pylist()
        n = len(m)
        if postgres:
            args: object = (m, i, s, ts, ["confidence"] * n, c, [None] * n, [None] * n, c, ["identity"] * n,
                            [now] * n)  # fmt: skip
        else:
            args = list(zip(m, i, s, ts, ["confidence"] * n, c, [None] * n, [None] * n, c, ["identity"] * n,
                            [now] * n, strict=True))  # fmt: skip
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(PG_INSERT if postgres else SQLITE_INSERT, args)  # type: ignore[arg-type]
        elapsed += time.perf_counter() - began
    engine.dispose()
    return elapsed


def imported(url: str, history: Path, labels: Path, workdir: Path) -> dict[str, float]:
    settings = Settings(database_url=url)
    engine = create_store_engine(url)
    upgrade(engine)
    out: dict[str, float] = {}
    first = import_history(engine, settings, history, None, workdir / "rejected.jsonl")
    out["import"] = first.prediction_seconds
    out["inserted"] = first.inserted
    print(f"import {first.prediction_seconds:.1f} s, {first.inserted:,} inserted", flush=True)
    again = import_history(engine, settings, history, None, workdir / "rejected.jsonl")
    out["resume"] = again.prediction_seconds
    assert again.inserted == 0, "a second import inserted rows"
    print(f"resume {again.prediction_seconds:.1f} s", flush=True)
    began = time.perf_counter()
    labelled = import_history(engine, settings, None, labels, workdir / "rejected.jsonl")
    out["labels"] = time.perf_counter() - began
    out["labels_read"] = labelled.labels_read
    out["matched"] = labelled.matched
    print(f"labels {out['labels']:.1f} s, {labelled.matched:,} applied", flush=True)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
        assert stored == first.inserted, (stored, first.inserted)
    engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL cluster")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="calmon-import-"))
    lines = [
        "| backend | rows | raw insert (rows/s) | calmon import (s) | calmon import (rows/s) | import / raw "
        "| resume: all rows already stored (s) | labels (rows) | labels (s) | labels (rows/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cluster = None
    try:
        began = time.perf_counter()
        history, labels = write_files(args.rows, time.time(), workdir)
        size = history.stat().st_size / 2**20
        print(f"files written in {time.perf_counter() - began:.0f} s ({size:.0f} MiB)", flush=True)
        backends = [("SQLite", lambda tag: f"sqlite:///{workdir / (tag + '.db')}")]
        if args.postgres:
            from tests.support import pgcluster

            cluster = pgcluster.start_cluster(durable=True)
            pg = cluster

            def pg_url(tag: str) -> str:
                engine = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.execute(text(f"CREATE DATABASE import_{tag}"))
                engine.dispose()
                return pg.url(f"import_{tag}")

            backends.append(("PostgreSQL (fsync on)", pg_url))
        for name, url_for in backends:
            raw = raw_insert(url_for("raw"), history, time.time())
            print(f"{name}: raw insert {raw:.1f} s ({args.rows / raw:,.0f} rows/s)", flush=True)
            r = imported(url_for("import"), history, labels, workdir)
            rate = args.rows / r["import"]
            lines.append(
                f"| {name} | {args.rows:,} | {args.rows / raw:,.0f} | {r['import']:.1f} | **{rate:,.0f}** "
                f"| {rate / (args.rows / raw):.2f} | {r['resume']:.1f} | {int(r['labels_read']):,} "
                f"| {r['labels']:.1f} | {r['labels_read'] / r['labels']:,.0f} |"
            )
            print(lines[-1], flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    report = (
        f"### Import ({time.strftime('%Y-%m-%d')}): `python benchmarks/importing.py --rows {args.rows}`\n\n"
        f"Machine: {machine()}\n\n" + "\n".join(lines)
    )
    print(report)
    if args.out:
        write_section(args.out, "import", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
