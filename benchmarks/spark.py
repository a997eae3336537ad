"""The Spark job against calmon's own path for the same history (issue 16, part 3).

A prediction file (``--rows`` predictions, 10 models x 5 segments over the last 6 days) and a label
file (half of them) in Parquet are written first (not timed). Then:

* **Spark job**: ``monitor.spark.job.sketch`` in local mode (``local[N]``, N = the machine's cores) and
  the parts it makes (``parts``: read back to the driver, cut, serialised), wall time;
* **calmon's share of the Spark path**: posting the parts to ``POST /v1/sketches`` of a real
  ``calmon serve`` (SQLite, its evaluation held off) with the job's own uploader, then the leader's
  fold of the stored parts (``EvaluationTick.fold``, in this process, the daemon stopped);
* **calmon's own path**: ``calmon import`` of both files and the leader's fold of the imported rows
  (drift evidence and hourly rollup included, as the tick folds).

Both end in the same buckets (``tests/spark/test_job.py`` holds that on two million rows). What the
Spark path moves out of calmon is the per-row work: calmon receives and folds sums whose size grows
with series x buckets x bins, not with rows.

Run: ``python benchmarks/spark.py --rows 2000000 --days 1 --out benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import orjson  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.bulk.importer import import_history  # noqa: E402
from monitor.config import load_settings  # noqa: E402
from monitor.evaluation.tick import EvaluationTick  # noqa: E402
from monitor.spark.batches import Limits  # noqa: E402
from monitor.spark.job import Spec, parts, sketch  # noqa: E402
from monitor.spark.upload import Uploader  # noqa: E402
from monitor.store.engine import create_store_engine  # noqa: E402
from monitor.store.migrate import upgrade  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402

MODELS = 10
SEGMENTS = 5


def write_history(
    n: int, days: float, now: float, folder: Path, models: int = MODELS, segments: int = SEGMENTS
) -> tuple[Path, Path]:
    rng = np.random.default_rng(7)
    confidence = rng.beta(6, 2, n)
    ts = np.sort(now - days * 86400 + rng.uniform(0, days * 86400 - 600, n))
    predictions = pd.DataFrame(
        {
            "model": [f"model-{i}" for i in rng.integers(0, models, n)],
            "id": [f"p{i}" for i in range(n)],
            "segment": [f"seg-{i}" for i in rng.integers(0, segments, n)],
            "ts": ts,
            "confidence": confidence,
        }
    )
    chosen = rng.random(n) < 0.5
    labels = pd.DataFrame(
        {
            "model": predictions["model"][chosen],
            "id": predictions["id"][chosen],
            "correct": (rng.random(n) < confidence - 0.1)[chosen],
            "labelled_at": ts[chosen] + 60.0,
        }
    )
    p, lab = folder / "predictions.parquet", folder / "labels.parquet"
    predictions.to_parquet(p, index=False, row_group_size=200_000)
    labels.to_parquet(lab, index=False, row_group_size=200_000)
    return p, lab


def spark_session(cores: int):  # type: ignore[no-untyped-def]
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    return (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", str(cores * 4))
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--models", type=int, default=MODELS)
    parser.add_argument("--segments", type=int, default=SEGMENTS)
    parser.add_argument("--section", default="spark", help="the RESULTS.md section to (re)write")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        p, lab = write_history(args.rows, args.days, now, folder, args.models, args.segments)
        spark = spark_session(cores)
        spark.sparkContext.setLogLevel("ERROR")

        sketch_url = f"sqlite:///{folder / 'sketches.db'}"
        settings = load_settings(None, database_url=sketch_url)
        spec = Spec.from_settings(settings, now)
        began = time.perf_counter()
        result = sketch(spark.read.parquet(str(p)), spark.read.parquet(str(lab)), spec)
        # parts kept as bytes: millions of small Python objects would only measure the collector
        documents = [orjson.dumps(d) for d in parts(result, spec, "bench", Limits())]
        spark_s = time.perf_counter() - began
        sent = sum(len(d) for d in documents)
        spark.stop()

        engine = create_store_engine(sketch_url)
        upgrade(engine)
        config = folder / "calmon.yaml"
        config.write_text("evaluation: {interval_seconds: 86400}\n")  # posting only: no tick meanwhile
        daemon = Daemon(sketch_url, config=config, log_path=folder / "daemon.log")
        try:
            daemon.wait_healthy()
            uploader = Uploader(daemon.base_url, None)
            began = time.perf_counter()
            for document in documents:
                assert uploader.send(orjson.loads(document)) == "accepted"
            post_s = time.perf_counter() - began
        finally:
            daemon.stop()
        began = time.perf_counter()
        EvaluationTick(engine, settings).fold(now)
        sketch_fold_s = time.perf_counter() - began
        with engine.connect() as conn:
            buckets = conn.exec_driver_sql("SELECT COUNT(*) FROM sketch_bins").scalar_one()
        engine.dispose()

        import_url = f"sqlite:///{folder / 'import.db'}"
        settings = load_settings(None, database_url=import_url)
        engine = create_store_engine(import_url)
        upgrade(engine)
        began = time.perf_counter()
        import_history(engine, settings, p, lab, folder / "rejected.jsonl")
        import_s = time.perf_counter() - began
        began = time.perf_counter()
        EvaluationTick(engine, settings).fold(now)
        import_fold_s = time.perf_counter() - began
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM sketch_bins").scalar_one() == buckets
        engine.dispose()

    rows = [
        f"| Spark job, local[{cores}] (sketch + parts) | {spark_s:.1f} | — | {len(documents)} parts, "
        f"{sent / 2**20:.0f} MiB of JSON, {buckets:,} bucket rows stored |",
        f"| calmon: POST /v1/sketches + leader's fold | {post_s + sketch_fold_s:.1f} | "
        f"{post_s:.1f} + {sketch_fold_s:.1f} | SQLite |",
        f"| calmon: `calmon import` + leader's fold | {import_s + import_fold_s:.1f} | "
        f"{import_s:.1f} + {import_fold_s:.1f} | SQLite |",
    ]
    density = args.rows / (args.models * args.segments * args.days * 288)
    body = "\n".join(
        [
            f"### Sketches on Spark vs calmon's own path ({time.strftime('%Y-%m-%d')}): "
            f"{args.rows:,} predictions over {args.days:g} days, half labelled (issue 16, part 3)",
            "",
            f"Machine: {machine()}; PySpark local mode on the same cores, Java "
            f"{os.popen('java -version 2>&1').read().split(chr(34))[1]}. "  # noqa: S605
            f"`python benchmarks/spark.py --rows {args.rows} --days {args.days:g} --models {args.models} "
            f"--segments {args.segments}`: {args.models} models x {args.segments} segments, "
            f"~{density:.0f} rows per series and 5-minute bucket, "
            "default configuration (120 fine bins). Both paths end in the same buckets (asserted here; "
            "tests/spark/test_job.py holds them equal bin for bin).",
            "",
            "| step | wall (s) | split (s) | notes |",
            "|---|---:|---:|---|",
            *rows,
        ]
    )
    print(body)
    if args.out:
        write_section(args.out, args.section, body)


if __name__ == "__main__":
    main()
