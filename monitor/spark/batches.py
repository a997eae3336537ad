"""Summed sketch rows as ``POST /v1/sketches`` documents: bounded parts with stable ids.

A part holds whole buckets (both scores and their evidence: calmon checks them against each other)
and the span of every series it touches; parts are cut in one sorted order, so a re-run of the same
job over the same tables makes the same parts under the same ids, and calmon treats the ones it
already has as duplicates (a resumed upload writes nothing twice). The training sample goes in parts
of its own after the buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from monitor.spark.partials import BET_COLUMNS, BUCKET, VALUE_COLUMNS

__all__ = ["Limits", "Run", "documents"]

_BUCKET_BYTES = 120  # a bucket object's names and keys, roughly, in JSON
_BIN_BYTES = 10 * 24 + 8  # ten numbers and a bin
_EVIDENCE_BYTES = 400
_SAMPLE_BYTES = 120


@dataclass(frozen=True)
class Limits:
    """What one request may carry (calmon's ``limits.max_batch_records`` and body size)."""

    records: int = 10_000
    bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class Run:
    """The configuration the sums were computed at (calmon checks it), and the id every part's id
    starts with."""

    run_id: str
    bucket_seconds: int
    fine_bins: int
    evidence_bins: int
    tolerance: dict[str, float] = field(default_factory=dict)


def documents(
    rows: Iterable[pd.DataFrame],
    series: pd.DataFrame,
    sample: pd.DataFrame,
    run: Run,
    limits: Limits | None = None,
) -> Iterator[dict[str, Any]]:
    """Parts from summed sketch rows (``partials`` columns) sorted by model, segment, bucket_start,
    kind, score, bin, given in chunks (a chunk may end anywhere); ``series`` has model, segment,
    first_ts, last_ts; ``sample`` model, segment, ts, confidence, correct."""
    limits = limits or Limits()
    spans = {
        (m, s): (float(first), float(last))
        for m, s, first, last in series[["model", "segment", "first_ts", "last_ts"]].itertuples(index=False)
    }
    part = _Part()
    number = 0
    for key, buckets, evidence in _buckets(rows):
        if part.full_with(buckets, evidence, limits):
            yield part.document(run, f"{run.run_id}-{number:06d}", spans)
            number += 1
            part = _Part()
        part.add(key, buckets, evidence)
    if part.buckets:
        yield part.document(run, f"{run.run_id}-{number:06d}", spans)
        number += 1
    records = sample[["model", "segment", "ts", "confidence", "correct"]].itertuples(index=False)
    chunk: list[dict[str, Any]] = []
    for m, s, ts, confidence, correct in records:
        chunk.append({"model": m, "segment": s, "ts": float(ts), "confidence": float(confidence),
                      "correct": bool(correct)})  # fmt: skip
        if len(chunk) >= min(limits.records, limits.bytes // _SAMPLE_BYTES):
            yield _sample_document(run, f"{run.run_id}-{number:06d}", chunk)
            number += 1
            chunk = []
    if chunk:
        yield _sample_document(run, f"{run.run_id}-{number:06d}", chunk)


Key = tuple[str, str, float]


def _buckets(
    chunks: Iterable[pd.DataFrame],
) -> Iterator[tuple[Key, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Each (model, segment, bucket_start)'s bucket objects and evidence rows, in order."""
    current: Key | None = None
    grouped: dict[str, dict[str, Any]] = {}
    evidence: list[dict[str, Any]] = []
    for chunk in chunks:
        columns = ["kind", "model", "segment", "score", "bucket_start", "bin", *VALUE_COLUMNS, *BET_COLUMNS]
        for row in chunk[columns].itertuples(index=False, name=None):
            kind, model, segment, score, bucket_start, bin_ = row[:6]
            key = (model, segment, float(bucket_start))
            if key != current:
                if current is not None:
                    yield current, list(grouped.values()), evidence
                current, grouped, evidence = key, {}, []
            values = [float(v) for v in row[6 : 6 + len(VALUE_COLUMNS)]]
            if kind == BUCKET:
                bucket = grouped.setdefault(
                    score, {"model": model, "segment": segment, "score": score,
                            "bucket_start": float(bucket_start), "bins": [], "moments": []},
                )  # fmt: skip
                bucket["bins"].append(int(bin_))
                bucket["moments"].append(values)
            else:
                bets = [float(v) for v in row[6 + len(VALUE_COLUMNS) :]]
                g = [] if score == "paired" else [bets[i : i + 2] for i in range(0, len(bets), 2)]
                evidence.append({"model": model, "segment": segment, "score": score,
                                 "bucket_start": float(bucket_start), "bin": int(bin_), "n": values[0],
                                 "d": values[1], "q": values[2], "g": g})  # fmt: skip
    if current is not None:
        yield current, list(grouped.values()), evidence


@dataclass
class _Part:
    buckets: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    series: dict[tuple[str, str], None] = field(default_factory=dict)
    size: int = 0

    @staticmethod
    def _bytes(buckets: list[dict[str, Any]], evidence: list[dict[str, Any]]) -> int:
        bins = sum(len(b["bins"]) for b in buckets)
        return _BUCKET_BYTES * len(buckets) + _BIN_BYTES * bins + _EVIDENCE_BYTES * len(evidence)

    def full_with(
        self, buckets: list[dict[str, Any]], evidence: list[dict[str, Any]], limits: Limits
    ) -> bool:
        if not self.buckets:
            return False
        return (
            len(self.buckets) + len(buckets) > limits.records
            or len(self.evidence) + len(evidence) > limits.records
            or self.size + self._bytes(buckets, evidence) > limits.bytes
        )

    def add(self, key: Key, buckets: list[dict[str, Any]], evidence: list[dict[str, Any]]) -> None:
        self.buckets.extend(buckets)
        self.evidence.extend(evidence)
        self.series[key[0], key[1]] = None
        self.size += self._bytes(buckets, evidence)

    def document(
        self, run: Run, batch_id: str, spans: dict[tuple[str, str], tuple[float, float]]
    ) -> dict[str, Any]:
        for e in self.evidence:
            e["tolerance"] = run.tolerance[e["model"]]
        return {
            **_head(run, batch_id),
            "buckets": self.buckets,
            "series": [
                {"model": m, "segment": s, "first_ts": spans[m, s][0], "last_ts": spans[m, s][1]}
                for m, s in self.series
            ],
            "evidence": self.evidence,
            "sample": [],
        }


def _head(run: Run, batch_id: str) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "bucket_seconds": run.bucket_seconds,
        "fine_bins": run.fine_bins,
        "evidence_bins": run.evidence_bins,
    }


def _sample_document(run: Run, batch_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {**_head(run, batch_id), "buckets": [], "series": [], "evidence": [], "sample": rows}
