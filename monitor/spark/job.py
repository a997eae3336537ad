"""The Spark job: a prediction table and a label table in, calmon's sketch batches out.

Run where the history lives (``spark-submit``, README "Sketches from Spark"): it checks every row
by calmon's rules (rejected rows, with the reason, to ``--rejected``), keeps the first prediction per
``(model, id)`` (earliest ``ts``) and the first label (earliest ``labelled_at``), joins them, and sums
calmon's sketch buckets per (model, segment, bucket, bin) — both scores, every moment, and the drift
detectors' label sums at the tolerance calmon bets each model at — with calmon's own code on every
partition (``partials``). The rows of one (model, segment, bucket) are summed by one task, in one
pass. The sums, each series' first and last time and a bounded training sample (the newest labelled
rows per series) go to calmon as ``POST /v1/sketches`` parts (``batches``, ``upload``), or to files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from monitor.config import Settings, load_settings
from monitor.spark.batches import Limits, Run, documents
from monitor.spark.partials import BET_COLUMNS, KEY_COLUMNS, PARTIAL_SCHEMA, VALUE_COLUMNS, sketch_partials
from monitor.spark.upload import Uploader
from monitor.vocabulary import MODEL_WIDE

__all__ = ["Sketches", "Spec", "main", "read_table", "sketch"]

log = logging.getLogger("calmon.spark")
DAY = 86_400.0
# calmon's name rule (collector.schemas.NAME_PATTERN) in Java's regex dialect, \s Unicode-aware as
# in Python: no control character, at least one visible character.
_NAME = r"(?U)^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
_NAME_LENGTH = 256
ROW_ORDER = ("model", "segment", "ts", "raw", "calibrated", "correct")  # every value a row adds
SAMPLE_PER_SERIES = 20_000  # newest labelled rows per series sent for recalibration, by default
# Rows this close to a retention horizon are refused here: calmon checks the horizon again when the
# parts arrive, later, and would refuse a whole part for a bucket that expired meanwhile.
MARGIN = DAY


@dataclass(frozen=True)
class Spec:
    """What the job takes from calmon's configuration (the same file the daemon reads)."""

    bucket_seconds: int
    fine_bins: int
    evidence_bins: int
    oldest_bucket: float  # retention.sketch_days back: older buckets would be deleted on arrival
    oldest_sample: float  # retention.raw_days back
    newest: float  # now + limits.max_future_skew_seconds
    sample_per_series: int
    settings: Settings  # the tolerance each model's labels are bet at

    @classmethod
    def from_settings(cls, settings: Settings, now: float, sample_per_series: int | None = None) -> Spec:
        cfg = settings.evaluation
        return cls(
            bucket_seconds=cfg.bucket_seconds,
            fine_bins=cfg.fine_bins,
            evidence_bins=cfg.ece_bins,
            oldest_bucket=math.floor(
                (now - settings.retention.sketch_days * DAY + MARGIN) / cfg.bucket_seconds
            )
            * cfg.bucket_seconds,
            oldest_sample=now - settings.retention.raw_days * DAY + MARGIN,
            newest=now + settings.limits.max_future_skew_seconds,
            sample_per_series=sample_per_series or min(settings.recalibration.max_rows, SAMPLE_PER_SERIES),
            settings=settings,
        )

    def tolerance(self, model: str) -> float:
        return self.settings.tolerance_for(model)


@dataclass
class Sketches:
    """The job's results as Spark frames (sorted where order matters) and what it refused."""

    sums: DataFrame  # KEY_COLUMNS + VALUE_COLUMNS + BET_COLUMNS, sorted for ``batches.documents``
    series: DataFrame  # model, segment, first_ts, last_ts
    sample: DataFrame  # model, segment, ts, confidence, correct
    rejected: DataFrame  # table, model, id, reason
    joined: DataFrame  # the rows they come from, persisted

    def release(self) -> None:
        """Drop the persisted rows (a session that runs more than one job keeps its memory)."""
        self.joined.unpersist()


def read_table(spark: SparkSession, location: str) -> DataFrame:
    """``table:NAME`` (a catalog table), or a path read by its extension (.parquet, .csv, .json,
    .jsonl; a directory: Parquet)."""
    if location.startswith("table:"):
        return spark.table(location.removeprefix("table:"))
    suffix = Path(location).suffix.lower()
    if suffix == ".csv":
        return spark.read.option("header", True).option("inferSchema", True).csv(location)
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return spark.read.json(location)
    return spark.read.parquet(location)


def _name_ok(column: Column) -> Column:
    return column.isNotNull() & (F.length(column) <= _NAME_LENGTH) & column.rlike(_NAME)


def _epoch(frame: DataFrame, name: str) -> Column:
    """A time column as epoch seconds: a timestamp, or a number of seconds."""
    kind = frame.schema[name].dataType
    if isinstance(kind, T.TimestampType | T.TimestampNTZType | T.DateType):
        return F.unix_micros(F.col(name).cast("timestamp")).cast("double") / 1e6
    return F.col(name).cast("double")


def _first_failure(checks: Sequence[tuple[Column, str]]) -> Column:
    reason = F.lit(None).cast("string")
    for ok, message in reversed(checks):
        reason = F.when(~F.coalesce(ok, F.lit(False)), F.lit(message)).otherwise(reason)
    return reason


def _has(frame: DataFrame, name: str) -> bool:
    return name in frame.columns


def clean_predictions(frame: DataFrame, spec: Spec) -> tuple[DataFrame, DataFrame]:
    """Rows calmon would accept as (model, id, segment, ts, raw, calibrated, predicted), and the
    others with a reason."""
    for needed in ("model", "id", "ts", "confidence"):
        if not _has(frame, needed):
            raise ValueError(f"the prediction table has no column {needed!r}")
    segment = (
        F.coalesce(F.col("segment").cast("string"), F.lit("default"))
        if _has(frame, "segment")
        else F.lit("default")
    )
    calibrated = (
        F.col("calibrated_confidence").cast("double")
        if _has(frame, "calibrated_confidence")
        else F.col("confidence").cast("double")
    )
    predicted = F.col("predicted").cast("string") if _has(frame, "predicted") else F.lit(None).cast("string")
    typed = frame.select(
        F.col("model").cast("string").alias("model"),
        F.col("id").cast("string").alias("id"),
        segment.alias("segment"),
        _epoch(frame, "ts").alias("ts"),
        F.col("confidence").cast("double").alias("raw"),
        calibrated.alias("calibrated"),
        predicted.alias("predicted"),
    )
    reason = _first_failure(
        [
            (_name_ok(F.col("model")), "model: not a calmon name"),
            (_name_ok(F.col("id")), "id: not a calmon name"),
            (_name_ok(F.col("segment")) & (F.col("segment") != MODEL_WIDE), "segment: not a calmon segment"),
            (F.col("ts").isNotNull() & ~F.isnan("ts"), "ts: missing or not a time"),
            (F.col("ts") >= spec.oldest_bucket, "ts: older than retention.sketch_days less a day"),
            (F.col("ts") <= spec.newest, "ts: in the future"),
            (F.col("raw").between(0.0, 1.0), "confidence: not in [0, 1]"),
            (F.col("calibrated").between(0.0, 1.0), "calibrated_confidence: not in [0, 1]"),
            (F.col("predicted").isNull() | (F.length("predicted") <= _NAME_LENGTH), "predicted: too long"),
        ]
    )
    checked = typed.withColumn("reason", reason)
    valid = checked.where(F.col("reason").isNull()).drop("reason")
    rejected = checked.where(F.col("reason").isNotNull()).select(
        F.lit("predictions").alias("table"), "model", "id", "reason"
    )
    return valid, rejected


def clean_labels(frame: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Labels calmon would accept as (model, id, correct, label, labelled_at), and the others."""
    for needed in ("model", "id", "labelled_at"):
        if not _has(frame, needed):
            raise ValueError(f"the label table has no column {needed!r}")
    if not (_has(frame, "correct") or _has(frame, "label")):
        raise ValueError("the label table needs a 'correct' or a 'label' column")
    correct = F.col("correct").cast("boolean") if _has(frame, "correct") else F.lit(None).cast("boolean")
    label = F.col("label").cast("string") if _has(frame, "label") else F.lit(None).cast("string")
    typed = frame.select(
        F.col("model").cast("string").alias("model"),
        F.col("id").cast("string").alias("id"),
        correct.alias("correct"),
        label.alias("label"),
        _epoch(frame, "labelled_at").alias("labelled_at"),
    )
    reason = _first_failure(
        [
            (_name_ok(F.col("model")), "model: not a calmon name"),
            (_name_ok(F.col("id")), "id: not a calmon name"),
            (F.col("correct").isNull() != F.col("label").isNull(), "correct/label: exactly one is required"),
            (F.col("label").isNull() | (F.length("label") <= _NAME_LENGTH), "label: too long"),
            (F.col("labelled_at").isNotNull() & ~F.isnan("labelled_at"), "labelled_at: missing"),
        ]
    )
    checked = typed.withColumn("reason", reason)
    valid = checked.where(F.col("reason").isNull()).drop("reason")
    rejected = checked.where(F.col("reason").isNotNull()).select(
        F.lit("labels").alias("table"), "model", "id", "reason"
    )
    return valid, rejected


def joined_rows(predictions: DataFrame, labels: DataFrame) -> DataFrame:
    """One row per (model, id): the first prediction, with its first label's correctness (1.0 or
    0.0; -1.0 without one), derived as calmon derives it (``correct``, else label == predicted)."""
    first_prediction = Window.partitionBy("model", "id").orderBy(
        "ts", "raw", "segment", "calibrated", "predicted"
    )
    kept = (
        predictions.withColumn("_rank", F.row_number().over(first_prediction))
        .where(F.col("_rank") == 1)
        .drop("_rank")
    )
    first_label = Window.partitionBy("model", "id").orderBy("labelled_at", "correct", "label")
    first = (
        labels.withColumn("_rank", F.row_number().over(first_label))
        .where(F.col("_rank") == 1)
        .select("model", "id", F.col("correct").alias("_correct"), F.col("label").alias("_label"))
    )
    both = kept.join(first, ["model", "id"], "left")
    derived = F.coalesce(
        F.col("_correct"),
        F.when(
            F.col("_label").isNotNull() & F.col("predicted").isNotNull(),
            F.col("_label") == F.col("predicted"),
        ),
    )
    correct = F.when(derived.isNull(), F.lit(-1.0)).otherwise(derived.cast("double"))
    return both.select("model", "segment", "ts", "raw", "calibrated", correct.alias("correct"))


def sketch(predictions: DataFrame, labels: DataFrame, spec: Spec, partitions: int | None = None) -> Sketches:
    """The job's results, lazily (nothing runs until they are read)."""
    valid_predictions, rejected_predictions = clean_predictions(predictions, spec)
    valid_labels, rejected_labels = clean_labels(labels)
    # read four times (models, sums, spans, sample): joined once, kept on the executors (disk if need be)
    rows = joined_rows(valid_predictions, valid_labels).persist()
    models = [r.model for r in rows.select("model").distinct().collect()]
    tolerance = {m: spec.tolerance(m) for m in models}
    bucket = F.floor(F.col("ts") / spec.bucket_seconds) * spec.bucket_seconds
    keyed = rows.withColumn("_bucket", bucket)
    spread = (
        keyed.repartition(partitions, "model", "segment", "_bucket")
        if partitions
        else keyed.repartition("model", "segment", "_bucket")
    )
    bucket_seconds, fine_bins, evidence_bins = spec.bucket_seconds, spec.fine_bins, spec.evidence_bins

    def partial(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        # A whole partition at once: each (model, segment, bucket) lives in one partition only. Rows
        # arrive in shuffle order, which differs between runs; summed in sorted order, the sums are
        # the same to the bit, so a re-run makes the same parts (calmon's duplicate check is exact).
        chunks = list(frames)
        if not chunks:  # an empty partition (more partitions than buckets)
            return
        frame = pd.concat(chunks, ignore_index=True)
        frame = frame.sort_values(list(ROW_ORDER), kind="stable", ignore_index=True)
        yield sketch_partials(frame, bucket_seconds, fine_bins, evidence_bins, tolerance)

    partials = spread.drop("_bucket").mapInPandas(partial, PARTIAL_SCHEMA)
    sums = (
        partials.groupBy(*KEY_COLUMNS)
        .agg(*(F.sum(c).alias(c) for c in (*VALUE_COLUMNS, *BET_COLUMNS)))
        .orderBy("model", "segment", "bucket_start", "kind", "score", "bin")
    )
    series = rows.groupBy("model", "segment").agg(F.min("ts").alias("first_ts"), F.max("ts").alias("last_ts"))
    newest = Window.partitionBy("model", "segment").orderBy(F.col("ts").desc(), "raw", "correct")
    sample = (
        rows.where((F.col("correct") >= 0) & (F.col("ts") >= spec.oldest_sample))
        .withColumn("_rank", F.row_number().over(newest))
        .where(F.col("_rank") <= spec.sample_per_series)
        .select(
            "model",
            "segment",
            "ts",
            F.col("raw").alias("confidence"),
            (F.col("correct") == 1.0).alias("correct"),
        )
        .orderBy("model", "segment", "ts", "confidence", "correct")
    )
    return Sketches(sums, series, sample, rejected_predictions.unionByName(rejected_labels), rows)


def _chunks(frame: DataFrame, size: int = 50_000) -> Iterator[pd.DataFrame]:
    """A sorted frame's rows in order, a bounded chunk at a time (``toLocalIterator`` keeps one
    partition on the driver)."""
    rows: list[Any] = []
    for row in frame.toLocalIterator(prefetchPartitions=True):
        rows.append(row)
        if len(rows) >= size:
            yield pd.DataFrame(rows, columns=frame.columns)
            rows = []
    if rows:
        yield pd.DataFrame(rows, columns=frame.columns)


def parts(result: Sketches, spec: Spec, run_id: str, limits: Limits) -> Iterator[dict[str, Any]]:
    """The ``POST /v1/sketches`` documents of a result, in their stable order."""
    models = [r.model for r in result.series.select("model").distinct().collect()]
    run = Run(
        run_id,
        spec.bucket_seconds,
        spec.fine_bins,
        spec.evidence_bins,
        {m: spec.tolerance(m) for m in models},
    )
    series = result.series.toPandas()
    sample = result.sample.toPandas()
    yield from documents(_chunks(result.sums), series, sample, run, limits)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="monitor.spark.job",
        description="Sketch a prediction table and a label table for calmon (POST /v1/sketches).",
    )
    parser.add_argument("--predictions", required=True, help="path (.parquet, .csv, .json[l]) or table:NAME")
    parser.add_argument(
        "--labels", required=True, help="path or table:NAME (model, id, correct or label, labelled_at)"
    )
    parser.add_argument(
        "--config", help="calmon's configuration file (bucket width, bins, tolerances, retention)"
    )
    parser.add_argument(
        "--run-id", required=True, help="every part's batch id starts with it; re-use it to resume"
    )
    parser.add_argument("--url", help="calmon's base URL; the parts are posted there")
    parser.add_argument(
        "--token-env", default="CALMON_TOKEN", help="environment variable with an admin token"
    )
    parser.add_argument("--output", help="write the parts as JSON files here instead of (or before) posting")
    parser.add_argument("--rejected", help="write the rejected rows (table, model, id, reason) here, as JSON")
    parser.add_argument(
        "--partitions", type=int, help="partitions to sum over (default: Spark's shuffle setting)"
    )
    parser.add_argument(
        "--sample-per-series", type=int, help="newest labelled rows per series for recalibration"
    )
    parser.add_argument("--max-records", type=int, default=10_000, help="calmon's limits.max_batch_records")
    parser.add_argument(
        "--max-bytes", type=int, default=4 * 1024 * 1024, help="a part's size in bytes, at most"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    if not (args.url or args.output):
        parser.error("give --url (post the parts to calmon) or --output (write them)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _arguments(argv)
    settings = load_settings(args.config)
    spec = Spec.from_settings(settings, time.time(), args.sample_per_series)
    spark = SparkSession.builder.appName(f"calmon-sketches-{args.run_id}").getOrCreate()
    result = sketch(
        read_table(spark, args.predictions), read_table(spark, args.labels), spec, args.partitions
    )
    rejected = result.rejected.count()
    if args.rejected:
        result.rejected.write.mode("overwrite").json(args.rejected)
    uploader = None
    if args.url:
        token = os.environ.get(args.token_env)
        uploader = Uploader(args.url, token, timeout=args.timeout)
    output = Path(args.output) if args.output else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    summary = {"parts": 0, "accepted": 0, "duplicate": 0, "buckets": 0, "rejected_rows": rejected}
    for document in parts(result, spec, args.run_id, Limits(args.max_records, args.max_bytes)):
        summary["parts"] += 1
        summary["buckets"] += len(document["buckets"])
        if output is not None:
            (output / f"{document['batch_id']}.json").write_text(json.dumps(document))
        if uploader is not None:
            status = uploader.send(document)
            summary[status] += 1
    result.release()
    print(json.dumps(summary))
    return 0  # the session is left to spark-submit (or to the caller that made it)


if __name__ == "__main__":
    sys.exit(main())
