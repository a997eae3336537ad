"""``calmon import``: a history of predictions and labels into the live store.

One chunk (``sources.CHUNK_ROWS`` rows) is one transaction: checked (``bulk.checks``, the API's
rules), admitted against ``limits.max_models``, scored by the calibrators serving now (as the API
would score it), inserted (``store.insertion``), and committed. A row already in the store is a
duplicate and changes nothing, so an interrupted import is resumed by running it again. Labels go
through the API's own feedback path (first label wins; a different later one is a recorded
conflict; a label whose prediction is not in the store is parked), with the time each was known.

Raw rows arrive unfolded: the daemon's leader folds them into the sketch buckets at its next
evaluation tick, as it folds a backlog (or ``calmon rebuild-aggregates`` offline).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from sqlalchemy import Engine

from monitor.bulk.checks import Labels, Predictions, RowRejection, check_labels, check_predictions
from monitor.bulk.prefetch import prefetched
from monitor.bulk.sources import CHUNK_ROWS, Chunk, Kind, Source, open_source
from monitor.collector.serving import RegistryScorer, score_by_series
from monitor.collector.validation import model_cap_error, over_model_cap
from monitor.config import Settings
from monitor.store.engine import READ_ONLY
from monitor.store.ingest import apply_feedback, join_parked
from monitor.store.insertion import Columns, insert_columns
from monitor.store.models import known_models, lower_first_seen, register_models
from monitor.store.records import FeedbackItem

__all__ = ["ImportSummary", "import_history"]

Progress = Callable[[Source], Any]  # returns an object with update(n) and close(); see cli


@dataclass
class ImportSummary:
    predictions_read: int = 0
    inserted: int = 0
    duplicates: int = 0
    predictions_rejected: int = 0
    labelled_from_pending: int = 0
    labels_read: int = 0
    matched: int = 0
    pending: int = 0
    label_duplicates: int = 0
    conflicts: int = 0
    labels_rejected: int = 0
    rejected_by_field: Counter[str] = field(default_factory=Counter)
    rejected_path: Path | None = None
    seconds: float = 0.0
    prediction_seconds: float = 0.0
    new_models: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("rejected_by_field", "rejected_path")}
        out["rejected_by_field"] = dict(self.rejected_by_field)
        out["rejected_path"] = str(self.rejected_path) if self.rejected_path else None
        return out

    def lines(self) -> list[str]:
        out = []
        if self.predictions_read:
            rate = self.predictions_read / self.prediction_seconds if self.prediction_seconds else 0.0
            out.append(
                f"predictions: {self.predictions_read:,} read, {self.inserted:,} inserted, "
                f"{self.duplicates:,} already stored, {self.predictions_rejected:,} rejected "
                f"({self.prediction_seconds:.1f} s, {rate:,.0f} rows/s)"
            )
        if self.labels_read:
            out.append(
                f"labels: {self.labels_read:,} read, {self.matched:,} applied, {self.pending:,} parked "
                f"(no such prediction yet), {self.label_duplicates:,} duplicates, {self.conflicts:,} "
                f"conflicts (kept the first), {self.labels_rejected:,} rejected"
            )
        if self.labelled_from_pending:
            out.append(f"{self.labelled_from_pending:,} parked labels joined their imported predictions")
        if self.new_models:
            out.append(f"new models: {', '.join(self.new_models)}")
        if self.rejected_by_field:
            fields = ", ".join(f"{name} {count:,}" for name, count in self.rejected_by_field.most_common())
            out.append(f"rejected rows by field: {fields}; every one in {self.rejected_path}")
        if not self.predictions_read and not self.labels_read:
            out.append("no rows read: the files hold no data rows")
        if self.inserted or self.matched:
            out.append(
                "the daemon folds the new rows at its next evaluation tick; for millions of rows, run "
                "`calmon rebuild-aggregates` with the daemon stopped (README, Importing a history)"
            )
        return out


class _Rejections:
    """The report of rejected rows, one JSON line each, opened at the first rejection."""

    def __init__(self, path: Path, summary: ImportSummary):
        self.path = path
        self.summary = summary
        self.handle: IO[bytes] | None = None

    def write(self, kind: Kind, rejected: list[RowRejection]) -> None:
        if not rejected:
            return
        if self.handle is None:
            self.handle = self.path.open("wb")
            self.summary.rejected_path = self.path
        for r in rejected:
            self.summary.rejected_by_field[r.field] += 1
            line = {"file": kind, "row": r.row, "id": r.id, "field": r.field, "error": r.error}
            self.handle.write(orjson.dumps(line) + b"\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


@dataclass(frozen=True)
class _Run:
    """What every chunk of an import needs: where it goes, the rules, its clock, its report."""

    engine: Engine
    settings: Settings
    now: float
    report: _Rejections


@contextmanager
def _opened(path: Path, summary: ImportSummary) -> Iterator[_Rejections]:
    report = _Rejections(path, summary)
    try:
        yield report
    finally:
        report.close()


def import_history(
    engine: Engine,
    settings: Settings,
    predictions: Path | None,
    labels: Path | None,
    rejected_path: Path,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
    chunk_rows: int = CHUNK_ROWS,
) -> ImportSummary:
    """Import the files (predictions first, so their labels join directly); raises
    ``ImportInputError`` before writing anything when a file's format or columns are unusable."""
    began = time.perf_counter()
    summary = ImportSummary()
    now = clock()
    files: list[tuple[Path | None, Kind]] = [(predictions, "predictions"), (labels, "labels")]
    given = [(p, k) for p, k in files if p is not None]
    sources = [open_source(p, k, chunk_rows) for p, k in given]
    rejected_path.unlink(missing_ok=True)  # a report left by an earlier run would mislead
    with _opened(rejected_path, summary) as report:
        run = _Run(engine, settings, now, report)
        for source in sources:
            bar = progress(source) if progress else None
            started = time.perf_counter()
            try:
                if source.kind == "predictions":
                    _import_predictions(run, source, bar)
                    summary.prediction_seconds = time.perf_counter() - started
                else:
                    _import_labels(run, source, bar)
            finally:
                if bar is not None:
                    bar.close()
    summary.seconds = time.perf_counter() - began
    return summary


def _advance(bar: Any, source: Source, rows: int, read_bytes: int) -> None:
    if bar is None:
        return
    if source.total_rows is not None:
        bar.update(rows)
    else:
        bar.update(read_bytes - bar.n)


def _import_predictions(run: _Run, source: Source, bar: Any) -> None:
    engine, settings, now, summary, report = run.engine, run.settings, run.now, run.report.summary, run.report
    limits = settings.limits
    scorer = RegistryScorer()
    scorer.refresh(engine, now)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        known = known_models(conn)

    def aggregation_for(model: str) -> Any:
        return settings.model_config_for(model).token_aggregation

    def checked_chunks() -> Iterator[tuple[Chunk, int, Predictions]]:
        for chunk, read_bytes in source.chunks:
            horizon = settings.retention.raw_days
            yield chunk, read_bytes, check_predictions(chunk, now, limits, aggregation_for, horizon)

    for chunk, read_bytes, checked in prefetched(checked_chunks()):
        size = len(chunk) + len(chunk.unreadable)
        summary.predictions_read += size
        rejected = [*_unreadable(chunk), *checked.rejected]
        checked, refused, new = _admit(checked, known, limits.max_models)
        rejected.extend(refused)
        rejected.sort(key=lambda r: r.row)
        report.write("predictions", rejected)
        summary.predictions_rejected += len(rejected)
        vectors = list(zip(checked.input_kind, checked.vector, strict=True))
        raw = checked.raw.tolist()
        calibrated, versions = score_by_series(scorer, checked.model, checked.segment, raw, vectors)
        earliest = _earliest(checked)
        with engine.begin() as conn:
            register_models(conn, {m: earliest[m] for m in new})
            lower_first_seen(conn, {m: t for m, t in earliest.items() if m not in new})
            columns = Columns(checked.model, checked.prediction_id, checked.segment, checked.ts.tolist(),
                              checked.input_kind, raw, checked.predicted, checked.vector,
                              calibrated, versions)  # fmt: skip
            inserted = insert_columns(conn, columns, now)
            summary.labelled_from_pending += join_parked(conn, set(earliest))
        known.update(new)
        summary.new_models.extend(new)
        summary.inserted += inserted
        summary.duplicates += len(checked) - inserted
        _advance(bar, source, size, read_bytes)


def _unreadable(chunk: Chunk) -> list[RowRejection]:
    """Rows the reader could not parse (a CSV row of the wrong number of fields): rejected whole."""
    return [RowRejection(row, None, "record", reason) for row, reason in chunk.unreadable]


def _admit(
    checked: Predictions, known: set[str], cap: int
) -> tuple[Predictions, list[RowRejection], list[str]]:
    """Rows of tracked models or of new ones that fit under ``limits.max_models`` (the API's rule
    and message), the rejections of the others, and the models admitted."""
    new = list(dict.fromkeys(m for m in checked.model if m not in known))
    if not new:
        return checked, [], []
    refused = over_model_cap(new, len(known), cap)
    if not refused:
        return checked, [], new
    keep = np.array([m not in refused for m in checked.model], dtype=bool)
    rejections = [
        RowRejection(
            int(checked.rows[i]),
            checked.prediction_id[i],
            "model",
            model_cap_error(cap, checked.model[i]),
        )
        for i in np.flatnonzero(~keep).tolist()
    ]
    return checked.keep(keep), rejections, [m for m in new if m not in refused]


def _earliest(checked: Predictions) -> dict[str, float]:
    earliest: dict[str, float] = {}
    for model in dict.fromkeys(checked.model):
        earliest[model] = float("inf")
    if len(earliest) == 1:
        (model,) = earliest
        return {model: float(checked.ts.min())}
    for model, ts in zip(checked.model, checked.ts.tolist(), strict=True):
        if ts < earliest[model]:
            earliest[model] = ts
    return earliest


def _import_labels(run: _Run, source: Source, bar: Any) -> None:
    engine, settings, now, summary, report = run.engine, run.settings, run.now, run.report.summary, run.report

    def checked_chunks() -> Iterator[tuple[Chunk, int, Labels]]:
        for chunk, read_bytes in source.chunks:
            yield chunk, read_bytes, check_labels(chunk, now, settings.limits)

    for chunk, read_bytes, checked in prefetched(checked_chunks()):
        size = len(chunk) + len(chunk.unreadable)
        summary.labels_read += size
        rejected = sorted([*_unreadable(chunk), *checked.rejected], key=lambda r: r.row)
        report.write("labels", rejected)
        summary.labels_rejected += len(rejected)
        items = [
            FeedbackItem(m, p, c, lab)
            for m, p, c, lab in zip(checked.model, checked.prediction_id, checked.correct, checked.label,
                                    strict=True)
        ]  # fmt: skip
        with engine.begin() as conn:
            outcome = apply_feedback(conn, items, now, checked.labelled_at)
        counts = Counter(outcome.statuses)
        summary.matched += counts["matched"]
        summary.pending += counts["pending"]
        summary.label_duplicates += counts["duplicate"]
        summary.conflicts += counts["conflict"]
        _advance(bar, source, size, read_bytes)
