"""The relational schema (SQLAlchemy Core). Alembic migrations must produce exactly this.

Times are stored as float epoch seconds (UTC): exact to the microsecond for this century, cheap to
bucket with arithmetic in SQL on both SQLite and PostgreSQL, and free of time-zone ambiguity.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    exists,
    text,
)

from monitor.calibration.sketch import MOMENTS

__all__ = [
    "MOMENT_COLUMNS",
    "NAME_LENGTH",
    "BigId",
    "calibrator_reports",
    "calibrators",
    "events",
    "evidence",
    "evidence_pending",
    "feedback_conflicts",
    "fold_queue",
    "leases",
    "metadata",
    "models",
    "needs_fold",
    "pending_feedback",
    "predictions",
    "segments",
    "series_totals",
    "sketch_batches",
    "sketch_bins",
    "sketch_hours",
    "snapshots",
    "training_sample",
]


NAME_LENGTH = 256
MOMENT_COLUMNS = MOMENTS  # one column per sketch moment, named and ordered as the sketch's
# BIGINT on PostgreSQL, INTEGER on SQLite so that it aliases the rowid and autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

predictions = Table(
    "predictions",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("prediction_id", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("ts", Float(precision=53), nullable=False),
    Column("received_at", Float(precision=53), nullable=False),
    Column("input_kind", String(16), nullable=False),  # confidence | probs | logits | token_logprobs
    Column("raw_confidence", Float(precision=53), nullable=False),
    Column("predicted", String(NAME_LENGTH)),
    Column("vector", LargeBinary),  # float32 little-endian probs or logits, bounded length
    Column("calibrated_confidence", Float(precision=53), nullable=False),
    Column("calibrator_version", String(64), nullable=False),
    Column("correct", Boolean),
    Column("label", String(NAME_LENGTH)),
    Column("labelled_at", Float(precision=53)),
    UniqueConstraint("model", "prediction_id"),
    # A series' rows in arrival order (recalibration's newest labelled rows, whether a series exists).
    # Not keyed on ``ts``: clients send prediction times out of order, and an index on them takes
    # each batch's rows at random places: a 1000-row SQLite commit wrote 429 pages at 60k rows, 89
    # at 5k, growing with the store (benchmarks/RESULTS.md, "Series index on arrival"); ``pk`` only
    # grows, so each series' new entries land on its last page (64 and 58 pages). ``segment`` leads
    # so that a lookup by (model, id) has one usable index: PostgreSQL's generic plan for it, made
    # before the table was first analysed, otherwise took the series index on ``model`` alone and
    # filtered every row of the model (feedback 8x slower on a fresh store, worse as it grew).
    Index(None, "segment", "model", "pk"),
)

# The fold's work list: a prediction whose row or label is not in the sketch buckets yet has a row
# here (``fresh``: the prediction itself is not counted; else only its label). Ingest inserts them,
# a label on a counted row inserts one, the fold deletes what it counted. Kept out of the predictions
# rows so that counting them never rewrites a prediction: a fold state in the row made a rebuild of a
# 10M-row backlog an UPDATE of every row and every index entry (108 s of 165 s on PostgreSQL).
fold_queue = Table(
    "fold_queue",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=False),  # predictions.pk
    Column("fresh", Boolean, nullable=False),
)

# Every model calmon tracks, in the order it first saw them: ``limits.max_models`` is enforced
# against this table at ingest, so client-chosen model names cannot grow series without bound.
models = Table(
    "models",
    metadata,
    Column("model", String(NAME_LENGTH), primary_key=True),
    # first seen: the earliest prediction time in the batch that brought the model (history pages
    # start there); rows written before the status page hold the arrival time instead
    Column("created_at", Float(precision=53), nullable=False),
)

# The segments of each model in the order they were first folded: the first ``max_segments`` keep
# their own series, later ones are folded into "other" (store/segments.py).
segments = Table(
    "segments",
    metadata,
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("model", "segment"),
)

# Feedback that arrived before its prediction. Joined (and deleted) when the prediction lands.
pending_feedback = Table(
    "pending_feedback",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("prediction_id", String(NAME_LENGTH), nullable=False),
    Column("correct", Boolean),
    Column("label", String(NAME_LENGTH)),
    Column("received_at", Float(precision=53), nullable=False),
    UniqueConstraint("model", "prediction_id"),
    Index(None, "received_at"),
)

# A second, different label for an already-labelled prediction: kept for audit, never applied.
feedback_conflicts = Table(
    "feedback_conflicts",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("prediction_id", String(NAME_LENGTH), nullable=False),
    Column("kept_correct", Boolean),
    Column("kept_label", String(NAME_LENGTH)),
    Column("rejected_correct", Boolean),
    Column("rejected_label", String(NAME_LENGTH)),
    Column("received_at", Float(precision=53), nullable=False),
    Index(None, "model", "prediction_id"),
)

calibrators = Table(
    "calibrators",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("version", Integer, nullable=False),
    Column("method", String(32), nullable=False),
    Column("params", Text, nullable=False),  # JSON, never pickle
    Column("fit_start", Float(precision=53)),
    Column("fit_end", Float(precision=53)),
    Column("metrics", Text, nullable=False, server_default="{}"),  # JSON
    Column("status", String(16), nullable=False),  # candidate | active | rejected | retired
    Column("reason", Text, nullable=False, server_default=""),
    Column("created_at", Float(precision=53), nullable=False),
    Column("activated_at", Float(precision=53)),
    # The version that was active when this one was activated (0: none); NULL before migration 0005.
    Column("replaced_id", BigId),
    UniqueConstraint("model", "segment", "version"),
    # Exactly one active calibrator per (model, segment): enforced by the database, not by hope.
    Index(
        "uq_calibrators_one_active",
        "model",
        "segment",
        unique=True,
        sqlite_where=text("status = 'active'"),
        postgresql_where=text("status = 'active'"),
    ),
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Float(precision=53), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("model", String(NAME_LENGTH)),
    Column("segment", String(NAME_LENGTH)),
    Column("calibrator_id", BigId, ForeignKey("calibrators.id")),
    Column("payload", Text, nullable=False, server_default="{}"),  # JSON
    Index(None, "ts"),
    Index(None, "model", "ts"),
    # the latest calibrator change per series, read by every evaluation (store.events.calibrator_changes)
    Index(None, "kind", "model", "segment", "ts"),
)

# CalibrationSketch moments per (model, segment, score, bucket of prediction time, fine bin).
# Late labels add to the bucket of their prediction. Always equal to a recompute from raw rows.
# Bins 0 .. fine_bins-1 are the uniform bins; fine_bins .. fine_bins+TAIL_BINS-1 the tail, a second,
# finer count of the top ~5% of confidence (``calibration.sketch``): sums across bins take bin < fine_bins.
sketch_bins = Table(
    "sketch_bins",
    metadata,
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("score", String(16), nullable=False),  # raw | calibrated
    Column("bucket_start", Float(precision=53), nullable=False),
    Column("bin", Integer, nullable=False),
    *(Column(name, Float(precision=53), nullable=False) for name in MOMENT_COLUMNS),
    PrimaryKeyConstraint("model", "segment", "score", "bucket_start", "bin"),
    Index(None, "bucket_start"),
)

# The same moments summed per hour (of bucket start) and per coarse bin (``bins`` = evaluation.ece_bins
# when written), for pages that show a week of one series (``store.history``): ~100x fewer rows to
# read than the 5-minute fine buckets. Written by the fold in its transaction; rebuilt from
# ``sketch_bins`` with one set-based statement after a rebuild or when ``ece_bins`` changes.
sketch_hours = Table(
    "sketch_hours",
    metadata,
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("score", String(16), nullable=False),
    Column("hour_start", Float(precision=53), nullable=False),
    Column("bins", SmallInteger, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    *(Column(name, Float(precision=53), nullable=False) for name in MOMENT_COLUMNS),
    PrimaryKeyConstraint("model", "segment", "score", "hour_start", "bins", "bin"),
    Index(None, "hour_start"),
)

# Lifetime totals per (model, series segment) of the raw score, kept by the fold in its transaction
# (``store.totals``): what the model listing and details count, in O(series) rows instead of a
# COUNT(*) over the raw predictions (seconds at 10M rows) or a sum over the buckets (millions of rows).
series_totals = Table(
    "series_totals",
    metadata,
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("predictions", Float(precision=53), nullable=False),
    Column("labelled", Float(precision=53), nullable=False),
    Column("correct", Float(precision=53), nullable=False),
    Column("confidence_sum_labelled", Float(precision=53), nullable=False),  # raw score
    Column("first_ts", Float(precision=53)),
    Column("last_ts", Float(precision=53)),
    PrimaryKeyConstraint("model", "segment"),
)

# Scheduler leadership: one row per lease name; the holder renews before it expires.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float(precision=53), nullable=False),
)

# The leader's latest evaluation, so every replica serves the same numbers without recomputing.
snapshots = Table(
    "snapshots",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", Float(precision=53), nullable=False),
    Column("body", Text, nullable=False),  # JSON
)

# One decision report per recalibration run that wrote a calibrator (JSON and Markdown).
calibrator_reports = Table(
    "calibrator_reports",
    metadata,
    Column("calibrator_id", BigId, ForeignKey("calibrators.id"), primary_key=True),
    Column("created_at", Float(precision=53), nullable=False),
    Column("body_json", Text, nullable=False),
    Column("body_markdown", Text, nullable=False),
)


# Label sums folded since the drift detectors last consumed them (``store.evidence``): written by
# the fold in its own transaction, deleted by the evaluation that bets on them in the transaction
# that saves the detectors — every folded label is bet on exactly once. Append-only, so a fold and
# an evaluation never update the same row. score: raw | calibrated (per confidence bin, n = labels,
# d = Σ(p - y), q = Σ(p - y)²) or paired (bin 0; d = Σ Δ, q = Σ Δ² of the Brier difference
# calibrated minus raw).
evidence_pending = Table(
    "evidence_pending",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("score", String(16), nullable=False),
    Column("bucket_start", Float(precision=53), nullable=False),
    Column("bins", SmallInteger, nullable=False),
    Column("bin", SmallInteger, nullable=False),
    Column("n", Float(precision=53), nullable=False),
    Column("d", Float(precision=53), nullable=False),
    Column("q", Float(precision=53), nullable=False),
    Column("tolerance", Float(precision=53), nullable=False),  # the τ the bets were placed at
    Column("g", LargeBinary, nullable=False),  # float64 (L, 2): Σ log(1 + λ(±(p - y) - τ)/(1 + τ))
)

# The drift detectors' state per series and score, so a restart or a new leader continues them.
# epoch: only labels of predictions made at or after it are bet on (the serving calibrator's start).
evidence = Table(
    "evidence",
    metadata,
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("score", String(16), nullable=False),  # raw | calibrated | paired
    Column("epoch", Float(precision=53), nullable=False),
    Column("steps", BigInteger, nullable=False),
    Column("labels", BigInteger, nullable=False),
    Column("log_r", LargeBinary, nullable=False),  # float64 per component
    Column("run_start", LargeBinary, nullable=False),
    Column("alarm_since", Float(precision=53)),
    Column("updated_at", Float(precision=53), nullable=False),
    PrimaryKeyConstraint("model", "segment", "score"),
)


# Sketch batches computed outside calmon (``POST /v1/sketches``: the Spark job, ``monitor.spark``),
# kept whole: the leader's fold adds each to the buckets once (``folded_at``), and a rebuild, which
# recomputes the buckets from raw rows, adds them again (no raw row of theirs is here). ``digest``
# makes a re-sent batch a no-op and a different batch under a used id a conflict. Retention deletes a
# batch once its last bucket has expired.
sketch_batches = Table(
    "sketch_batches",
    metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("digest", String(64), nullable=False),  # sha256 of the canonical validated body
    Column("received_at", Float(precision=53), nullable=False),
    Column("folded_at", Float(precision=53)),  # NULL: not in the buckets yet
    Column("first_bucket", Float(precision=53), nullable=False),
    Column("last_bucket", Float(precision=53), nullable=False),
    Column("body", Text, nullable=False),  # JSON: the batch as validated
    Index(None, "folded_at"),
)

# Labelled rows a sketch batch brought for recalibration (the raw rows stayed in the lake): a
# bounded sample, the newest per series, read with the predictions by ``store.training``.
training_sample = Table(
    "training_sample",
    metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("batch_id", String(128), nullable=False),
    Column("model", String(NAME_LENGTH), nullable=False),
    Column("segment", String(NAME_LENGTH), nullable=False),
    Column("ts", Float(precision=53), nullable=False),
    Column("raw_confidence", Float(precision=53), nullable=False),
    Column("correct", Boolean, nullable=False),
    Index(None, "model", "segment", "ts"),
    Index(None, "ts"),
)


def needs_fold() -> ColumnElement[bool]:
    """Prediction rows whose prediction or label is not in the sketch buckets yet (a ``fold_queue``
    row). Retention deletes only rows outside it, so nothing is lost unfolded."""
    return exists().where(fold_queue.c.pk == predictions.c.pk)
