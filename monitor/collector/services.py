"""What the routes call: validation, scoring, storing and shaping answers, with no HTTP in sight.

Routes read the request and pick the status; everything between a body and an answer lives here,
so a test (or another front end) can drive it without FastAPI.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from monitor.calibration.sequence import Aggregation
from monitor.collector.errors import ApiError, count_rejections
from monitor.collector.schemas import Rejection
from monitor.collector.serving import RegistryScorer, Scorer, score_by_series
from monitor.collector.validation import (
    BatchError,
    ScoredInput,
    model_cap_error,
    over_model_cap,
    parse_body,
    prepare_calibration,
    prepare_feedback,
    prepare_predictions,
)
from monitor.config import Settings
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.evaluation.windows import WindowStats
from monitor.store import calibrators as calibrator_store
from monitor.store.engine import READ_ONLY
from monitor.store.events import list_events
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.models import known_models, register_models
from monitor.store.queries import ModelCounts, SegmentCounts, active_calibrators, model_counts
from monitor.store.records import PredictionRow
from monitor.store.reports import load_report
from monitor.store.segments import TRACKED_BEYOND_CAP, SegmentMap, load_positions
from monitor.telemetry import ServiceMetrics
from monitor.vocabulary import MODEL_WIDE, OTHER_SEGMENT, EventKind, FeedbackOutcome, Score

__all__ = ["Notify", "Services", "model_summary", "window_summary"]

Notify = Callable[[str, str | None, str | None, dict[str, Any]], None]


def window_summary(stats: WindowStats) -> dict[str, Any]:
    data = stats.as_dict()
    data.pop("reliability")
    data.pop("histogram")
    data.pop("reference_histogram")
    return data


def _merge_segments(counts: ModelCounts, segment_map: SegmentMap) -> tuple[list[SegmentCounts], int]:
    """The model's segments as its series (the segment cap: beyond it, one ``other`` row), and how many
    segments were folded into ``other`` (registered ones, exact up to ``TRACKED_BEYOND_CAP``). Keeps
    the answer bounded whatever segments clients sent. ``segment_map`` is a preview: never saved."""
    merged: dict[str, SegmentCounts] = {}
    # oldest first: a segment not folded yet takes a free place as the fold would (by first prediction)
    for s in sorted(counts.segments, key=lambda s: (s.first_ts is None, s.first_ts or 0.0, s.segment)):
        # the totals hold ``other`` already folded; the rows not folded yet, their own segments
        name = OTHER_SEGMENT if s.segment == OTHER_SEGMENT else segment_map.series(counts.model, s.segment)
        into = merged.get(name)
        if into is None:
            merged[name] = SegmentCounts(
                name,
                s.predictions,
                s.labelled,
                s.correct,
                s.raw_confidence_sum_labelled,
                s.first_ts,
                s.last_ts,
            )
            continue
        into.predictions += s.predictions
        into.labelled += s.labelled
        into.correct += s.correct
        into.raw_confidence_sum_labelled += s.raw_confidence_sum_labelled
        into.first_ts = (
            min(t for t in (into.first_ts, s.first_ts) if t is not None) if s.first_ts else into.first_ts
        )
        into.last_ts = (
            max(t for t in (into.last_ts, s.last_ts) if t is not None) if s.last_ts else into.last_ts
        )
    cap = segment_map.cap_of(counts.model)
    folded = sum(p >= cap for p in segment_map.positions.get(counts.model, {}).values())
    return sorted(merged.values(), key=lambda s: s.segment), folded


def model_summary(counts: ModelCounts, segment_map: SegmentMap | None = None, cap: int = 0) -> dict[str, Any]:
    segments, folded = (
        _merge_segments(counts, segment_map) if segment_map is not None else (counts.segments, 0)
    )
    return {
        "model": counts.model,
        "predictions": counts.predictions,
        "labelled": counts.labelled,
        "label_coverage": counts.labelled / counts.predictions if counts.predictions else 0.0,
        "pending_feedback": counts.pending_feedback,
        "feedback_conflicts": counts.conflicts,
        "segments": [
            {
                "segment": s.segment,
                "predictions": s.predictions,
                "labelled": s.labelled,
                "label_coverage": s.labelled / s.predictions if s.predictions else 0.0,
                "accuracy": s.correct / s.labelled if s.labelled else None,
                "mean_confidence_labelled": s.raw_confidence_sum_labelled / s.labelled
                if s.labelled
                else None,
                "first_ts": s.first_ts,
                "last_ts": s.last_ts,
            }
            for s in segments
        ],
        "segment_cap": {
            "max_segments": cap,
            "segments_folded_into_other": folded,
            "segments_counted_up_to": TRACKED_BEYOND_CAP,
        },
    }


def decide(advice: dict[str, Any], confidence: float) -> dict[str, Any]:
    """Accept at or above the advised threshold; review below it, or when there is none."""
    threshold = advice["threshold"]
    accept = threshold is not None and confidence >= threshold
    return {"action": "accept" if accept else "review", **advice}


def _all_rejected(
    rejected: list[Any], message: str = "every record was rejected; nothing was written"
) -> BatchError:
    return BatchError(422, rejected[0].field, message, rejected)


class Services:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        scorer: Scorer,
        metrics: ServiceMetrics,
        snapshots: SnapshotHolder,
        clock: Callable[[], float] = time.time,
        notify: Notify = lambda *args: None,
    ):
        self.settings = settings
        self.engine = engine
        self.scorer = scorer
        self.metrics = metrics
        self.snapshots = snapshots
        self.clock = clock
        self.notify = notify
        self.known: set[str] = set()  # tracked models (the ``models`` table), refreshed on a miss

    def aggregation_for(self, model: str) -> Aggregation:
        return self.settings.model_config_for(model).token_aggregation

    # ---------------------------------------------------------------------------------- ingest
    def score(self, scored: list[ScoredInput]) -> list[PredictionRow]:
        """Each record with its series' calibrated confidence (one scorer call per series)."""
        calibrated, versions = score_by_series(
            self.scorer,
            [item.model for item in scored],
            [item.segment for item in scored],
            [item.raw_confidence for item in scored],
            [(item.input_kind, item.vector) for item in scored],
        )
        return [
            PredictionRow(*item[1:], c, v) for item, c, v in zip(scored, calibrated, versions, strict=True)
        ]

    def admit_models(self, scored: list[ScoredInput]) -> tuple[list[ScoredInput], list[Rejection], list[str]]:
        """Records whose model is tracked or fits under ``limits.max_models`` (new ones in order of
        appearance), a rejection for each other record, and the models to register.

        The cap is checked against the ``models`` table; replicas admitting new models at the same
        instant can exceed it by the few models they race on (documented).
        """
        new = list(dict.fromkeys(item.model for item in scored if item.model not in self.known))
        if not new:
            return scored, [], []
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            self.known = known_models(conn)
        new = [model for model in new if model not in self.known]
        cap = self.settings.limits.max_models
        refused = over_model_cap(new, len(self.known), cap)
        rejections = [
            Rejection(
                index=item.position,
                id=item.prediction_id,
                field="model",
                error=model_cap_error(cap, item.model),
            )
            for item in scored
            if item.model in refused
        ]
        admitted = sorted(set(new) - refused)
        return [item for item in scored if item.model not in refused], rejections, admitted

    def ingest_predictions(self, body: bytes, target: float | None = None) -> dict[str, Any]:
        items = parse_body(body, "predictions", self.settings.limits)
        now = self.clock()
        horizon = self.settings.retention.raw_days
        scored, rejected = prepare_predictions(
            items, now, self.settings.limits, self.aggregation_for, horizon
        )
        scored, refused, new_models = self.admit_models(scored)
        rejected = sorted(rejected + refused, key=lambda r: r.index)
        if rejected and not scored:
            raise _all_rejected(rejected)
        rows = self.score(scored)
        first_seen = {model: now for model in new_models}
        for item in scored:  # a new model's history starts at its earliest prediction, not at arrival
            if item.model in first_seen:
                first_seen[item.model] = min(first_seen[item.model], item.ts)
        with self.engine.begin() as conn:
            register_models(conn, first_seen)
            outcome = insert_predictions(conn, rows, now)
        self.known.update(new_models)
        accepted = Counter(
            item.model for item, r in zip(scored, outcome.results, strict=True) if not r.duplicate
        )
        for model, count in accepted.items():
            self.metrics.predictions.labels(model).inc(count)
        count_rejections(self.metrics, rejected)
        results = [
            {
                "index": item.position,
                "id": result.prediction_id,
                "calibrated_confidence": result.calibrated_confidence,
                "calibrator_version": result.calibrator_version,
                "duplicate": result.duplicate,
            }
            for item, result in zip(scored, outcome.results, strict=True)
        ]
        if target is not None:
            self.add_decisions(results, [(item.model, item.segment) for item in scored], target)
        return {
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
            "labelled_from_pending": outcome.labelled_from_pending,
            "rejected": [r.model_dump() for r in rejected],
            "results": results,
        }

    def ingest_feedback(self, body: bytes) -> dict[str, Any]:
        items = parse_body(body, "feedback", self.settings.limits)
        prepared, rejected = prepare_feedback(items, self.settings.limits)
        if rejected and not prepared:
            raise _all_rejected(rejected)
        with self.engine.begin() as conn:
            outcome = apply_feedback(conn, [item for _, item in prepared], self.clock())
        per_series = Counter(
            (item.model, status) for (_, item), status in zip(prepared, outcome.statuses, strict=True)
        )
        if any(item.model not in self.known for _, item in prepared):
            with self.engine.connect().execution_options(**READ_ONLY) as conn:
                self.known = known_models(conn)
        for (model, status), count in per_series.items():
            # A client may name any model in feedback (parked until its prediction comes): only
            # tracked models become label values; the rest are counted under "other".
            self.metrics.feedback.labels(model if model in self.known else OTHER_SEGMENT, status).inc(count)
        count_rejections(self.metrics, rejected)
        return {
            "matched": outcome.count(FeedbackOutcome.MATCHED),
            "pending": outcome.count(FeedbackOutcome.PENDING),
            "duplicates": outcome.count(FeedbackOutcome.DUPLICATE),
            "conflicts": outcome.count(FeedbackOutcome.CONFLICT),
            "rejected": [r.model_dump() for r in rejected],
        }

    def calibrate(self, body: bytes, target: float | None = None) -> dict[str, Any]:
        items = parse_body(body, "records", self.settings.limits)
        prepared, rejected = prepare_calibration(items, self.settings.limits, self.aggregation_for)
        if rejected and not prepared:
            raise _all_rejected(rejected, "every record was rejected")
        results = []
        for index, record, raw, kind, vector in prepared:
            values, version = self.scorer.score(record.model, record.segment, [raw], [(kind, vector)])
            results.append(
                {
                    "index": index,
                    "raw_confidence": raw,
                    "calibrated_confidence": values[0],
                    "calibrator_version": version,
                }
            )
        if target is not None:
            self.add_decisions(results, [(r.model, r.segment) for _, r, *_ in prepared], target)
        return {"results": results, "rejected": [r.model_dump() for r in rejected]}

    def add_decisions(
        self, results: list[dict[str, Any]], series: list[tuple[str, str]], target: float
    ) -> None:
        """Each scored result's accept/review for ``target``; the advice looked up once per series."""
        advice: dict[tuple[str, str], dict[str, Any]] = {}
        for result, key in zip(results, series, strict=True):
            if key not in advice:
                advice[key] = self.advice_for(*key, target)
            result.update(decide(advice[key], result["calibrated_confidence"]))

    def advice_for(self, model: str, segment: str, target: float) -> dict[str, Any]:
        """The threshold for ``target`` of a series (its segment, else the model-wide series), from the
        window with the most labels, or why there is none. No advice means review: the conservative
        choice (``decide``)."""
        snapshot = self.snapshots.get()
        stats: list[WindowStats] = []
        for series in (segment, MODEL_WIDE):
            stats = [
                s
                for s in (snapshot.for_model(model) if snapshot else [])
                if s.segment == series and s.score == Score.CALIBRATED and s.labelled
            ]
            if stats:
                break
        if not stats:
            return {
                "threshold": None,
                "advice_window": None,
                "advice_reason": "no labelled predictions evaluated for this series yet",
            }
        best = max(stats, key=lambda s: s.labelled)
        found = next((a for a in best.advice if a["target"] == target), None)
        if found is None:
            targets = self.settings.advice_targets_for(model, best.segment)
            reason = f"target {target:g} is not among the advice targets {targets} of this series"
        elif found["threshold"] is None:
            reason = f"no threshold reaches a precision of {target:g} with the labels so far"
        else:
            return {"threshold": found["threshold"], "advice_window": best.window, "advice_reason": None}
        return {"threshold": None, "advice_window": best.window, "advice_reason": reason}

    # ------------------------------------------------------------------------------------ read
    def list_models(self) -> list[dict[str, Any]]:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            counts = model_counts(conn)
            # a preview of the fold's mapping (never saved): folded segments as folded, new ones as the
            # fold will place them
            preview = SegmentMap(load_positions(conn), self.settings.max_segments_for)
        return [model_summary(c, preview, self.settings.max_segments_for(c.model)) for c in counts.values()]

    def model_detail(self, model: str) -> dict[str, Any]:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            counts = model_counts(conn, model).get(model)
            if counts is None:
                raise ApiError(404, f"unknown model {model!r}", "model")
            preview = SegmentMap(load_positions(conn, [model]), self.settings.max_segments_for)
            summary = model_summary(counts, preview, self.settings.max_segments_for(model))
            summary["calibrators"] = active_calibrators(conn, model)
        snapshot = self.snapshots.get()
        summary["evaluated_at"] = snapshot.created_at if snapshot else None
        summary["windows"] = [window_summary(s) for s in snapshot.for_model(model)] if snapshot else []
        summary["evidence"] = [e for e in snapshot.evidence if e["model"] == model] if snapshot else []
        return summary

    def window_stats(
        self, model: str, segment: str, window: str | None, score: str
    ) -> tuple[float, WindowStats]:
        """One window of the latest evaluation (when it ran, and its statistics), or a 4xx naming why."""
        if score not in tuple(Score):
            raise ApiError(422, "score must be 'raw' or 'calibrated'", "score")
        windows = self.settings.evaluation.windows
        window = window or windows[0]
        if window not in windows:
            raise ApiError(422, f"window must be one of {windows}", "window")
        snapshot = self.snapshots.get()
        if snapshot is None:
            raise ApiError(
                404, "no evaluation has run yet; retry after the first evaluation interval", "model"
            )
        stats = snapshot.find(model, segment, window, score)
        if stats is None:
            if not snapshot.for_model(model):
                raise ApiError(404, f"no data for model {model!r}", "model")
            message = f"no data for segment {segment!r} of model {model!r} in window {window}"
            raise ApiError(404, message, "segment")
        return snapshot.created_at, stats

    def advice(self, model: str, segment: str, window: str | None, target: float | None) -> dict[str, Any]:
        """The advised threshold(s) of one calibrated window: every configured target, or one."""
        evaluated_at, stats = self.window_stats(model, segment, window, Score.CALIBRATED)
        targets = self.settings.advice_targets_for(model, stats.segment)
        if target is not None and target not in targets:
            raise ApiError(422, f"target must be one of the configured advice targets {targets}", "target")
        advice = [a for a in stats.advice if target is None or a["target"] == target]
        return {
            "model": model,
            "segment": stats.segment,
            "window": stats.window,
            "evaluated_at": evaluated_at,
            "labelled": stats.labelled,
            "advice": advice,
            "risk_coverage": stats.risk_coverage,
            "guarantee": (
                "accepting answers whose calibrated confidence is at least `threshold` gives a precision "
                "of at least `target` with probability >= 1 - alpha on traffic like this window's "
                "(fixed-sequence test of the thresholds); the threshold moves when the calibrator changes"
            ),
        }

    def reliability(self, model: str, segment: str, window: str | None, score: str) -> dict[str, Any]:
        evaluated_at, stats = self.window_stats(model, segment, window, score)
        return {
            **window_summary(stats),
            "evaluated_at": evaluated_at,
            "bins": stats.reliability,
            "histogram": stats.histogram,
            "reference_histogram": stats.reference_histogram,
        }

    def events(
        self, model: str | None, kind: str | None, limit: int, before_id: int | None
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000:
            raise ApiError(422, "limit must lie in [1, 1000]", "limit")
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            return list_events(conn, model, kind, limit, before_id)

    # ----------------------------------------------------------------------------- calibrators
    def calibrators(self, model: str | None) -> list[dict[str, Any]]:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            return [r.as_dict() for r in calibrator_store.list_all(conn, model)]

    def calibrator(self, calibrator_id: int) -> dict[str, Any]:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            record = calibrator_store.get(conn, calibrator_id)
        if record is None:
            raise ApiError(404, f"no calibrator {calibrator_id}", "calibrator_id")
        return record.as_dict()

    def report(self, calibrator_id: int) -> tuple[dict[str, Any], str]:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            found = load_report(conn, calibrator_id)
        if found is None:
            raise ApiError(404, f"no report for calibrator {calibrator_id}", "calibrator_id")
        return found

    def rollback(self, calibrator_id: int) -> dict[str, Any]:
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                rolled, restored = calibrator_store.rollback(conn, calibrator_id, now)
        except LookupError as exc:
            raise ApiError(404, str(exc), "calibrator_id") from exc
        except ValueError as exc:
            raise ApiError(409, str(exc), "calibrator_id") from exc
        if isinstance(self.scorer, RegistryScorer):
            self.scorer.refresh(
                self.engine, now
            )  # this replica at once; the others within the refresh interval
        result = {"rolled_back": rolled.as_dict(), "restored": restored.as_dict() if restored else None}
        self.notify(EventKind.CALIBRATOR_ROLLED_BACK, rolled.model, rolled.segment, result)
        return result
