"""``POST /v1/sketches``: a sketch batch computed outside calmon, checked whole before one write.

A batch is the sums an engine outside calmon (``monitor.spark``) computed from rows calmon never
saw, so calmon cannot recount them; what it can do is refuse anything no set of predictions could
have produced. Besides the wire shape, every bin's moments must be sums of confidences that fall
in that bin (``lo^k n <= Σ p^k <= hi^k n``, counts whole, ``Σ y`` a count of at most ``n_l``,
``Σ log-likelihood <= 0``), the tail must count exactly what the uniform bins it refines count,
both scores must count the same predictions and labels in every bucket, the drift evidence must
bet on exactly the bucket's labels at the tolerance calmon bets that model at, and the batch must
have been computed at calmon's bucket width and bin counts. The first violation is a 422 naming
the field (``buckets[3].moments[2][4]``) and nothing is written: a batch is all or nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from sqlalchemy import Engine

from monitor.calibration.evidence import LAMBDAS
from monitor.calibration.sketch import MOMENTS, TAIL_BINS, Moment, tail_edges, tail_start_bin
from monitor.collector.schemas import Name, StrictFloat
from monitor.collector.validation import (
    BatchError,
    model_cap_error,
    over_model_cap,
    parse_timestamp,
    safe_text,
)
from monitor.config import Settings
from monitor.store import sketch_batches
from monitor.store.evidence import PAIRED, PendingRow
from monitor.store.models import known_models, lower_first_seen, register_models
from monitor.store.sketch_batches import BucketMoments, SampleRow, SeriesSpan, SketchBatch
from monitor.vocabulary import MODEL_WIDE

__all__ = ["BATCH_ID_PATTERN", "SketchBatchIn", "accept_sketches", "check_batch"]

BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
DAY = 86_400.0
_SLACK = 1e-9  # relative: sums of floats in another order than calmon's


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class BucketIn(_Item):
    model: Name
    segment: Name
    score: Literal["raw", "calibrated"]
    bucket_start: StrictFloat
    bins: list[Annotated[int, Field(strict=True, ge=0, le=100_000)]] = Field(min_length=1)
    moments: list[Annotated[list[StrictFloat], Field(min_length=len(MOMENTS), max_length=len(MOMENTS))]]


class SeriesIn(_Item):
    model: Name
    segment: Name
    first_ts: StrictFloat
    last_ts: StrictFloat


class EvidenceIn(_Item):
    model: Name
    segment: Name
    score: Literal["raw", "calibrated", "paired"]
    bucket_start: StrictFloat
    bin: Annotated[int, Field(strict=True, ge=0, le=100_000)]
    n: StrictFloat
    d: StrictFloat
    q: StrictFloat
    tolerance: StrictFloat
    g: list[Annotated[list[StrictFloat], Field(min_length=2, max_length=2)]] = Field(max_length=len(LAMBDAS))


class SampleIn(_Item):
    model: Name
    segment: Name
    ts: StrictFloat
    confidence: StrictFloat
    correct: StrictBool


class SketchBatchIn(BaseModel):
    """The wire form of a sketch batch (README, "Sketches from Spark"; made by ``monitor.spark``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    batch_id: Annotated[str, Field(strict=True, pattern=BATCH_ID_PATTERN)]
    bucket_seconds: Annotated[int, Field(strict=True, ge=1)]
    fine_bins: Annotated[int, Field(strict=True, ge=1)]
    evidence_bins: Annotated[int, Field(strict=True, ge=1)]
    buckets: list[BucketIn]
    series: list[SeriesIn]
    evidence: list[EvidenceIn] = []
    sample: list[SampleIn] = []


LISTS = ("buckets", "series", "evidence", "sample")


def _path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def parse_batch(body: bytes, max_records: int) -> SketchBatchIn:
    """The body as a ``SketchBatchIn``: 400 for JSON that does not parse, 413 for a list longer
    than ``limits.max_batch_records``, 422 naming the first field the shape refuses."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BatchError(400, "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BatchError(422, "body", "body must be a JSON object (a sketch batch)")
    for key in LISTS:
        items = data.get(key)
        if isinstance(items, list) and len(items) > max_records:
            raise BatchError(413, key, f"{len(items)} {key} exceed the limit of {max_records} per batch")
    try:
        return SketchBatchIn.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = "field required" if error["type"] == "missing" else str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = f"unknown field {safe_text(str(error['loc'][-1]))!r}"
        raise BatchError(422, _path(error["loc"]), message) from None


def _refuse(field: str, message: str) -> BatchError:
    return BatchError(422, field, message)


def _bin_edges(fine_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper confidence edge of every stored bin: uniform bins, then the tail."""
    uniform = np.arange(fine_bins + 1) / fine_bins
    tail = np.append(tail_edges(fine_bins), 1.0)
    return np.concatenate([uniform[:-1], tail[:-1]]), np.concatenate([uniform[1:], tail[1:]])


def _within(value: float, lo: float, hi: float, scale: float) -> bool:
    slack = _SLACK * max(1.0, scale)
    return lo - slack <= value <= hi + slack


def _whole(value: float) -> bool:
    return value >= 0 and value == math.floor(value)


def _check_moments(field: str, moments: np.ndarray, lo: float, hi: float) -> None:
    """One bin's moments could be sums over predictions whose confidence lies in ``[lo, hi]``."""
    n, sum_p, n_l, s1, s2, s3, s4, sy, syp, sll = moments.tolist()
    names = {name: f"{field}[{i}]" for i, name in enumerate(MOMENTS)}
    if not _whole(n):
        raise _refuse(names["n"], f"n must be a whole count, not {n!r}")
    if not _whole(n_l):
        raise _refuse(names["n_l"], f"n_l must be a whole count, not {n_l!r}")
    if n == 0 and n_l == 0:
        raise _refuse(field, "a bin with no prediction and no label is left out, not sent")
    if not _within(sum_p, lo * n, hi * n, n):
        raise _refuse(names["sum_p"], f"sum_p {sum_p!r} is not a sum of {n:g} confidences in {lo:g}..{hi:g}")
    for name, value, k in (("s1", s1, 1), ("s2", s2, 2), ("s3", s3, 3), ("s4", s4, 4)):
        if not _within(value, lo**k * n_l, hi**k * n_l, n_l):
            raise _refuse(
                names[name], f"{name} {value!r} is not a sum of {n_l:g} confidences^{k} in [{lo:g}, {hi:g}]"
            )
    if not (_whole(sy) and sy <= n_l):
        raise _refuse(names["sy"], f"sy must count correct labels, 0 to n_l ({n_l:g}), not {sy!r}")
    if not _within(syp, lo * sy, hi * sy, sy):
        raise _refuse(names["syp"], f"syp {syp!r} is not a sum of {sy:g} confidences in [{lo:g}, {hi:g}]")
    if sll > _SLACK * max(1.0, n_l):
        raise _refuse(names["sll"], f"sll is a sum of log-likelihoods, at most 0, not {sll!r}")


def _check_time(
    field: str, ts: float, now: float, settings: Settings, horizon_days: float | None = None
) -> None:
    """The API's own time rules (``parse_timestamp``): not before 1970, not beyond the future skew,
    not past ``horizon_days``."""
    try:
        parse_timestamp(ts, now, settings.limits, horizon_days)
    except ValueError as exc:
        raise _refuse(field, str(exc)) from None


def check_batch(batch: SketchBatchIn, settings: Settings, now: float) -> SketchBatch:
    """The batch, if some set of predictions could have produced it at calmon's configuration."""
    cfg = settings.evaluation
    for name, mine in (
        ("bucket_seconds", cfg.bucket_seconds),
        ("fine_bins", cfg.fine_bins),
        ("evidence_bins", cfg.ece_bins),
    ):
        theirs = getattr(batch, name)
        if theirs != mine:
            raise _refuse(name, f"the batch was computed with {name} = {theirs}; calmon folds with {mine}")
    fine = cfg.fine_bins
    width = fine + TAIL_BINS
    lows, highs = _bin_edges(fine)
    start = tail_start_bin(fine)
    sketch_horizon = now - settings.retention.sketch_days * DAY
    # per (model, segment, bucket_start): per score, the uniform-bin counts (n, n_l)
    counted: dict[tuple[str, str, float], dict[str, tuple[float, float]]] = {}
    first_field: dict[tuple[str, str, float], str] = {}
    buckets: list[BucketMoments] = []
    for i, b in enumerate(batch.buckets):
        field = f"buckets[{i}]"
        if b.segment == MODEL_WIDE:
            raise _refuse(f"{field}.segment", f"{MODEL_WIDE!r} is reserved for the model-wide series")
        if b.bucket_start % cfg.bucket_seconds:
            width_s = cfg.bucket_seconds
            raise _refuse(f"{field}.bucket_start", f"must be a multiple of bucket_seconds ({width_s})")
        _check_time(f"{field}.bucket_start", b.bucket_start, now, settings)
        if b.bucket_start < sketch_horizon - cfg.bucket_seconds:
            raise _refuse(
                f"{field}.bucket_start",
                "bucket older than retention.sketch_days: it would be deleted at once",
            )
        if len(b.moments) != len(b.bins):
            raise _refuse(f"{field}.moments", f"{len(b.moments)} moment rows for {len(b.bins)} bins")
        if len(set(b.bins)) != len(b.bins):
            raise _refuse(f"{field}.bins", "a bin is listed twice")
        moments = np.zeros((len(MOMENTS), width))
        for j, (bin_, row) in enumerate(zip(b.bins, b.moments, strict=True)):
            if bin_ >= width:
                raise _refuse(f"{field}.bins[{j}]", f"bin {bin_} beyond the {width} stored bins")
            values = np.asarray(row, dtype=np.float64)
            _check_moments(f"{field}.moments[{j}]", values, float(lows[bin_]), float(highs[bin_]))
            moments[:, bin_] = values
        for moment in (Moment.N, Moment.N_L):
            refined, tail = moments[moment, start:fine].sum(), moments[moment, fine:].sum()
            if refined != tail:
                raise _refuse(
                    f"{field}.moments",
                    f"the tail bins count {tail:g} {MOMENTS[moment]}; the bins they refine {refined:g}",
                )
        key = (b.model, b.segment, b.bucket_start)
        scores = counted.setdefault(key, {})
        first_field.setdefault(key, field)
        if b.score in scores:
            where = f"{b.model!r}/{b.segment!r} at {b.bucket_start:g}"
            raise _refuse(field, f"a second {b.score} bucket for {where}")
        scores[b.score] = (float(moments[Moment.N, :fine].sum()), float(moments[Moment.N_L, :fine].sum()))
        buckets.append(BucketMoments(b.model, b.segment, b.score, b.bucket_start, list(b.bins), b.moments))
    for key, scores in counted.items():
        if len(scores) != 2:
            raise _refuse(first_field[key], "every bucket needs both scores, raw and calibrated")
        if scores["raw"] != scores["calibrated"]:
            raise _refuse(
                first_field[key],
                f"raw counts (n, n_l) = {scores['raw']} but calibrated counts {scores['calibrated']}",
            )
    series = _check_series(batch, counted, cfg.bucket_seconds, now, settings)
    evidence = _check_evidence(batch, counted, settings.tolerance_for)
    sample = _check_sample(batch, now, settings)
    return SketchBatch(batch.batch_id, batch.evidence_bins, buckets, series, evidence, sample)


def _check_series(
    batch: SketchBatchIn,
    counted: dict[tuple[str, str, float], dict[str, tuple[float, float]]],
    bucket_seconds: int,
    now: float,
    settings: Settings,
) -> list[SeriesSpan]:
    starts: dict[tuple[str, str], list[float]] = {}
    for model, segment, bucket_start in counted:
        starts.setdefault((model, segment), []).append(bucket_start)
    spans: dict[tuple[str, str], SeriesSpan] = {}
    for i, s in enumerate(batch.series):
        field = f"series[{i}]"
        key = (s.model, s.segment)
        if key in spans:
            raise _refuse(field, f"{s.model!r}/{s.segment!r} is listed twice")
        if key not in starts:
            raise _refuse(field, f"no bucket of the batch holds {s.model!r}/{s.segment!r}")
        _check_time(f"{field}.first_ts", s.first_ts, now, settings)
        _check_time(f"{field}.last_ts", s.last_ts, now, settings)
        if s.first_ts > s.last_ts:
            raise _refuse(f"{field}.last_ts", "last_ts is before first_ts")
        lo = math.floor(s.first_ts / bucket_seconds) * bucket_seconds
        hi = math.floor(s.last_ts / bucket_seconds) * bucket_seconds
        if not lo <= min(starts[key]) <= max(starts[key]) <= hi:
            raise _refuse(field, "the series' buckets lie outside first_ts .. last_ts")
        spans[key] = SeriesSpan(s.model, s.segment, s.first_ts, s.last_ts)
    missing = [key for key in starts if key not in spans]
    if missing:
        raise _refuse("series", f"no first_ts/last_ts for {missing[0][0]!r}/{missing[0][1]!r}")
    return list(spans.values())


def _bet_bounds(n: float, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The least and most ``n`` labels' bet sums can be, per λ (x ranges over [-1, (1-τ)/(1+τ)])."""
    lambdas = np.array(LAMBDAS)
    return n * np.log1p(-lambdas), n * np.log1p(lambdas * (1 - tolerance) / (1 + tolerance))


def _check_evidence(
    batch: SketchBatchIn,
    counted: dict[tuple[str, str, float], dict[str, tuple[float, float]]],
    tolerance_of: Callable[[str], float],
) -> list[PendingRow]:
    labels: dict[tuple[str, str, float, str], float] = {}
    rows: list[PendingRow] = []
    for i, e in enumerate(batch.evidence):
        field = f"evidence[{i}]"
        key = (e.model, e.segment, e.bucket_start)
        if key not in counted:
            raise _refuse(field, "evidence for a bucket the batch does not hold")
        tau = tolerance_of(e.model)
        if abs(e.tolerance - tau) > 1e-12:
            raise _refuse(
                f"{field}.tolerance", f"bets placed at {e.tolerance:g}; calmon bets {e.model!r} at {tau:g}"
            )
        paired = e.score == PAIRED
        bins = 1 if paired else batch.evidence_bins
        if e.bin >= bins:
            raise _refuse(f"{field}.bin", f"bin {e.bin} beyond the {bins} evidence bins")
        if not (_whole(e.n) and e.n >= 1):
            raise _refuse(f"{field}.n", f"n must be a whole count of labels, at least 1, not {e.n!r}")
        if not _within(e.d, -e.n, e.n, e.n):
            raise _refuse(f"{field}.d", f"d is a sum of {e.n:g} differences in [-1, 1], not {e.d!r}")
        if not _within(e.q, 0.0, e.n, e.n):
            raise _refuse(f"{field}.q", f"q is a sum of {e.n:g} squares in [0, 1], not {e.q!r}")
        g = np.asarray(e.g, dtype=np.float64).reshape(-1, 2)
        if paired and g.size:
            raise _refuse(f"{field}.g", "paired evidence carries no bets")
        if not paired:
            if g.shape[0] != len(LAMBDAS):
                raise _refuse(f"{field}.g", f"one [up, down] pair per λ in {list(LAMBDAS)}")
            least, most = _bet_bounds(e.n, tau)
            bad = (g < least[:, None] - _SLACK * e.n) | (g > most[:, None] + _SLACK * e.n)
            if bad.any():
                k, j = (int(v) for v in np.argwhere(bad)[0])
                raise _refuse(f"{field}.g[{k}][{j}]", f"not a sum of {e.n:g} bets at λ = {LAMBDAS[k]}")
        tally = (e.model, e.segment, e.bucket_start, e.score)
        labels[tally] = labels.get(tally, 0.0) + e.n
        head = (e.model, e.segment, e.score, e.bucket_start, bins, e.bin)
        rows.append(PendingRow(*head, e.n, e.d, e.q, e.tolerance, g))
    if rows:  # evidence at all: then for every labelled bucket, all three scores
        for (model, segment, bucket_start), scores in counted.items():
            missing = [
                score
                for score in ("raw", "calibrated", PAIRED)
                if scores["raw"][1] and (model, segment, bucket_start, score) not in labels
            ]
            if missing:
                where = f"{model!r}/{segment!r} at {bucket_start:g}"
                raise _refuse("evidence", f"no {missing[0]} evidence for the labels of {where}")
    for (model, segment, bucket_start, score), n in labels.items():
        expected = counted[model, segment, bucket_start]["raw"][1]
        if n != expected:
            raise _refuse(
                "evidence",
                f"{score} evidence of {model!r}/{segment!r} at {bucket_start:g} bets on {n:g} labels; "
                f"the bucket holds {expected:g}",
            )
    return rows


def _check_sample(batch: SketchBatchIn, now: float, settings: Settings) -> list[SampleRow]:
    rows: list[SampleRow] = []
    for i, r in enumerate(batch.sample):
        field = f"sample[{i}]"
        if r.segment == MODEL_WIDE:
            raise _refuse(f"{field}.segment", f"{MODEL_WIDE!r} is reserved for the model-wide series")
        _check_time(f"{field}.ts", r.ts, now, settings, settings.retention.raw_days)
        if not 0.0 <= r.confidence <= 1.0:
            raise _refuse(f"{field}.confidence", f"confidence must lie in [0, 1], not {r.confidence!r}")
        rows.append(SampleRow(r.model, r.segment, r.ts, r.confidence, r.correct))
    return rows


def accept_sketches(
    body: bytes, engine: Engine, settings: Settings, now: float
) -> tuple[int, dict[str, Any]]:
    """Check and store a batch in one transaction: 201 accepted, 200 a duplicate of one accepted
    before (nothing written), 409 another batch under the same id, 413/422 refused."""
    parsed = parse_batch(body, settings.limits.max_batch_records)
    batch = check_batch(parsed, settings, now)
    first_seen: dict[str, float] = {}
    for span in batch.series:
        first_seen[span.model] = min(first_seen.get(span.model, math.inf), span.first_ts)
    with engine.begin() as conn:
        known = known_models(conn)
        new = [m for m in first_seen if m not in known]
        refused = over_model_cap(new, len(known), settings.limits.max_models)
        if refused:
            index = next(i for i, b in enumerate(batch.buckets) if b.model in refused)
            model = batch.buckets[index].model
            cap = settings.limits.max_models
            raise BatchError(422, f"buckets[{index}].model", model_cap_error(cap, model))
        for i, row in enumerate(batch.sample):  # a sample only for models calmon tracks (bounded)
            if row.model not in known and row.model not in first_seen:
                raise BatchError(422, f"sample[{i}].model", f"calmon tracks no model {row.model!r}")
        try:
            status = sketch_batches.accept(conn, batch, now)
        except sketch_batches.BatchConflict as exc:
            raise BatchError(409, "batch_id", str(exc)) from None
        if status == "accepted":
            register_models(conn, first_seen)
            lower_first_seen(conn, first_seen)
    summary = {
        "batch_id": batch.batch_id,
        "status": status,
        "buckets": len(batch.buckets),
        "evidence": len(batch.evidence),
        "sample": len(batch.sample),
    }
    return (201 if status == "accepted" else 200), summary
