"""Sketch batches computed outside calmon (``POST /v1/sketches``): accepted whole, folded once.

Sketches merge by addition, so an engine that can group rows (``monitor.spark``) can compute a
history's buckets where the history lives and send only the sums. A batch is stored as validated
(``sketch_batches``) in the transaction that answers 2xx; the leader's fold adds it to the buckets,
the hourly rollup, the series totals and the drift detectors' input exactly once (``fold_next``,
marking it folded in the same transaction), and passes the deltas on to the rolling windows like
any fold. Because no raw row of a batch is in calmon, ``calmon rebuild-aggregates`` adds every
stored batch again after recomputing the buckets from raw rows (``reapply``); the detectors' input
is never re-added (every label is bet on once). Segments are capped here as the fold caps them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from monitor.calibration.sketch import MOMENTS, TAIL_BINS
from monitor.store.buckets import BucketDelta, upsert_buckets
from monitor.store.evidence import PAIRED, PendingRow, append_pending
from monitor.store.history import fold_hours
from monitor.store.schema import sketch_batches, training_sample
from monitor.store.segments import CapOf, SegmentMap
from monitor.store.totals import SeriesSums, add_series_sums
from monitor.vocabulary import Score

__all__ = [
    "BatchConflict",
    "BucketMoments",
    "SampleRow",
    "SeriesSpan",
    "SketchBatch",
    "accept",
    "batch_status",
    "fold_next",
    "reapply",
]

_SCORES = (str(Score.RAW), str(Score.CALIBRATED))


@dataclass(frozen=True)
class BucketMoments:
    """One series' occupied bins of one score in one bucket (moments in ``MOMENTS`` order)."""

    model: str
    segment: str
    score: str
    bucket_start: float
    bins: list[int]
    moments: list[list[float]]


@dataclass(frozen=True)
class SeriesSpan:
    """The first and last prediction time of a series in the batch (the totals keep them)."""

    model: str
    segment: str
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class SampleRow:
    model: str
    segment: str
    ts: float
    confidence: float
    correct: bool


@dataclass(frozen=True)
class SketchBatch:
    batch_id: str
    evidence_bins: int
    buckets: list[BucketMoments]
    series: list[SeriesSpan]
    evidence: list[PendingRow]
    sample: list[SampleRow]

    def document(self) -> dict[str, Any]:
        """The batch in its wire form (without the configuration it was checked against)."""
        return {
            "batch_id": self.batch_id,
            "evidence_bins": self.evidence_bins,
            "buckets": [
                {"model": b.model, "segment": b.segment, "score": b.score, "bucket_start": b.bucket_start,
                 "bins": b.bins, "moments": b.moments}
                for b in self.buckets
            ],
            "series": [
                {"model": s.model, "segment": s.segment, "first_ts": s.first_ts, "last_ts": s.last_ts}
                for s in self.series
            ],
            "evidence": [
                {"model": e.model, "segment": e.segment, "score": e.score, "bucket_start": e.bucket_start,
                 "bin": e.bin, "n": e.n, "d": e.d, "q": e.q, "tolerance": e.tolerance, "g": e.g.tolist()}
                for e in self.evidence
            ],
            "sample": [
                {"model": r.model, "segment": r.segment, "ts": r.ts, "confidence": r.confidence,
                 "correct": r.correct}
                for r in self.sample
            ],
        }  # fmt: skip

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> SketchBatch:
        """A stored (already validated) document back as a batch."""
        bins = int(doc["evidence_bins"])
        return cls(
            doc["batch_id"],
            bins,
            [BucketMoments(**b) for b in doc["buckets"]],
            [SeriesSpan(**s) for s in doc["series"]],
            [_pending_of(e, bins) for e in doc["evidence"]],
            [SampleRow(**r) for r in doc.get("sample", [])],
        )

    def encoded(self) -> tuple[str, str]:
        """The stored body and its digest (sha256 of the canonical JSON: same batch, same digest)."""
        body = orjson.dumps(self.document(), option=orjson.OPT_SORT_KEYS)
        return body.decode(), hashlib.sha256(body).hexdigest()

    @property
    def bucket_range(self) -> tuple[float, float]:
        """First and last bucket start (a sample-only batch: its rows' times, so retention keeps
        its record, and with it the duplicate check, until after the rows themselves expire)."""
        starts = [b.bucket_start for b in self.buckets] or [r.ts for r in self.sample] or [0.0]
        return min(starts), max(starts)


def _pending_of(e: dict[str, Any], bins: int) -> PendingRow:
    head = (e["model"], e["segment"], e["score"], float(e["bucket_start"]))
    sums = (float(e["n"]), float(e["d"]), float(e["q"]), float(e["tolerance"]))
    g = np.array(e["g"], dtype=np.float64).reshape(-1, 2)
    return PendingRow(*head, 1 if e["score"] == PAIRED else bins, int(e["bin"]), *sums, g)


class BatchConflict(Exception):
    """A different batch was already accepted under this id."""


def accept(conn: Connection, batch: SketchBatch, now: float) -> Literal["accepted", "duplicate"]:
    """Store the batch and its training sample, in the caller's transaction; a batch already
    stored under its id with the same content is a duplicate (nothing written), another is a
    ``BatchConflict``."""
    body, digest = batch.encoded()
    first, last = batch.bucket_range
    row = {
        "batch_id": batch.batch_id, "digest": digest, "received_at": now, "folded_at": None,
        "first_bucket": first, "last_bucket": last, "body": body,
    }  # fmt: skip
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(sketch_batches).on_conflict_do_nothing(index_elements=["batch_id"])
    inserted = conn.execute(statement.returning(sketch_batches.c.batch_id), row).first()
    if inserted is None:
        stored = conn.execute(
            select(sketch_batches.c.digest).where(sketch_batches.c.batch_id == batch.batch_id)
        ).scalar()
        if stored != digest:
            raise BatchConflict(f"batch {batch.batch_id!r} was already accepted with different content")
        return "duplicate"
    if batch.sample:
        conn.execute(
            training_sample.insert(),
            [
                {"batch_id": batch.batch_id, "model": r.model, "segment": r.segment, "ts": r.ts,
                 "raw_confidence": r.confidence, "correct": r.correct}
                for r in batch.sample
            ],
        )  # fmt: skip
    return "accepted"


def batch_status(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    t = sketch_batches.c
    found = conn.execute(
        select(t.batch_id, t.digest, t.received_at, t.folded_at, t.first_bucket, t.last_bucket).where(
            t.batch_id == batch_id
        )
    ).first()
    return None if found is None else dict(found._mapping)


def fold_next(
    conn: Connection,
    fine_bins: int,
    cap_of: CapOf | None,
    hour_bins: int | None,
    now: float,
) -> tuple[str, list[BucketDelta]] | None:
    """Fold the oldest batch not folded yet, and mark it folded, in the caller's transaction; its
    id and the deltas it added (None: nothing waits). On PostgreSQL the batch is locked SKIP LOCKED,
    so two folds never take the same one."""
    t = sketch_batches.c
    query = (
        select(t.batch_id, t.body).where(t.folded_at.is_(None)).order_by(t.received_at, t.batch_id).limit(1)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    found = conn.execute(query).first()
    if found is None:
        return None
    batch = SketchBatch.from_document(orjson.loads(found.body))
    deltas = _apply(conn, batch, fine_bins, cap_of, hour_bins, with_evidence=True)
    conn.execute(update(sketch_batches).where(t.batch_id == found.batch_id).values(folded_at=now))
    return found.batch_id, deltas


def reapply(conn: Connection, fine_bins: int, cap_of: CapOf | None, since: float | None) -> int:
    """After a rebuild recomputed the buckets (those starting at ``since``, or all) from raw rows:
    add every stored batch's buckets there again, and mark every batch folded; how many batches."""
    t = sketch_batches.c
    query = select(t.batch_id, t.body).order_by(t.received_at, t.batch_id)
    if since is not None:
        query = query.where(t.last_bucket >= since)
    count = 0
    for _, body in conn.execute(query).all():
        batch = SketchBatch.from_document(orjson.loads(body))
        _apply(conn, batch, fine_bins, cap_of, None, with_evidence=False, since=since)
        count += 1
    conn.execute(update(sketch_batches).where(t.folded_at.is_(None)).values(folded_at=t.received_at))
    return count


def _apply(
    conn: Connection,
    batch: SketchBatch,
    fine_bins: int,
    cap_of: CapOf | None,
    hour_bins: int | None,
    *,
    with_evidence: bool,
    since: float | None = None,
) -> list[BucketDelta]:
    """Add a batch to the buckets, the totals (and the hours, the detectors' input): the deltas."""
    models = {s.model for s in batch.series} | {b.model for b in batch.buckets}
    segment_map = SegmentMap.load(conn, models, cap_of) if cap_of is not None else None

    def series_of(model: str, segment: str) -> str:
        return segment_map.series(model, segment) if segment_map is not None else segment

    for span in batch.series:  # register segments in the order the batch lists its series
        series_of(span.model, span.segment)
    width = fine_bins + TAIL_BINS
    summed: dict[tuple[str, str, str, float], np.ndarray] = {}
    for b in batch.buckets:
        if since is not None and b.bucket_start < since:
            continue
        key = (b.model, series_of(b.model, b.segment), b.score, b.bucket_start)
        moments = summed.get(key)
        if moments is None:
            moments = summed[key] = np.zeros((len(MOMENTS), width))
        moments[:, b.bins] += np.asarray(b.moments, dtype=np.float64).T
    deltas = [BucketDelta(m, s, score, start, v) for (m, s, score, start), v in summed.items()]
    for score in _SCORES:
        mine = [d for d in deltas if d.score == score]
        if mine:
            keys = [(d.model, d.segment, d.bucket_start) for d in mine]
            upsert_buckets(conn, keys, score, np.stack([d.moments for d in mine]))
    add_series_sums(conn, _series_sums(deltas, batch.series, series_of, fine_bins))
    if hour_bins is not None:
        fold_hours(
            conn, ((d.model, d.segment, d.score, d.bucket_start, d.moments) for d in deltas), hour_bins
        )
    if with_evidence and batch.evidence:
        append_pending(conn, _mapped(batch.evidence, series_of))
    if segment_map is not None:
        segment_map.save(conn)
    return deltas


def _series_sums(
    deltas: list[BucketDelta], spans: list[SeriesSpan], series_of: Any, fine_bins: int
) -> list[SeriesSums]:
    """The totals a batch adds per (model, series): the raw score's uniform-bin sums, as the fold's;
    first and last times from the batch's spans (its buckets' range where it gave none)."""
    picked = [MOMENTS.index(m) for m in ("n", "n_l", "sy", "s1")]
    sums: dict[tuple[str, str], np.ndarray] = {}
    starts: dict[tuple[str, str], list[float]] = {}
    for d in deltas:
        if d.score == Score.RAW:
            key = (d.model, d.segment)
            sums[key] = sums.get(key, 0.0) + d.moments[picked, :fine_bins].sum(axis=1)
            starts.setdefault(key, []).append(d.bucket_start)
    first = {key: min(found) for key, found in starts.items()}
    last = {key: max(found) for key, found in starts.items()}
    spanned: set[tuple[str, str]] = set()
    for span in spans:
        key = (span.model, series_of(span.model, span.segment))
        if key in sums:
            first[key] = min(first[key], span.first_ts) if key in spanned else span.first_ts
            last[key] = max(last[key], span.last_ts) if key in spanned else span.last_ts
            spanned.add(key)
    return [
        SeriesSums(m, s, float(v[0]), float(v[1]), float(v[2]), float(v[3]), first[m, s], last[m, s])
        for (m, s), v in sums.items()
    ]


def _mapped(rows: Iterable[PendingRow], series_of: Any) -> list[PendingRow]:
    return [
        PendingRow(r.model, series_of(r.model, r.segment), r.score, r.bucket_start, r.bins, r.bin,
                   r.n, r.d, r.q, r.tolerance, r.g)
        for r in rows
    ]  # fmt: skip
