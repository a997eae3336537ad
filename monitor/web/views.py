"""What each page shows, gathered from the published snapshot and the store's small tables.

Nothing here reads raw predictions: window statistics and drift evidence come from the snapshot the
leader published, history from the sketch buckets of one series (``store.history``), decisions from
the events, calibrator and report tables. The result is plain data for the templates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

import monitor.charts as charts
from monitor.calibration.estimate import estimate_accuracy
from monitor.calibration.sketch import CalibrationSketch
from monitor.config import Settings, parse_duration
from monitor.evaluation.snapshot import Snapshot
from monitor.evaluation.windows import WindowStats
from monitor.store import calibrators as calibrator_store
from monitor.store.events import latest_per_model, list_events
from monitor.store.evidence import PAIRED
from monitor.store.history import HOUR, sketch_history
from monitor.store.models import first_seen
from monitor.store.reports import reported
from monitor.store.segments import load_positions
from monitor.vocabulary import MODEL_WIDE, OTHER_SEGMENT, DriftKind, EventKind, Score

__all__ = [
    "ALARM",
    "NO_LABELS",
    "OK",
    "WATCH",
    "History",
    "ModelRow",
    "SeriesView",
    "history",
    "judge",
    "longest_window",
    "over_time_points",
    "overview",
    "series_view",
    "time_span",
]

ALARM, WATCH, OK, NO_LABELS = "alarm", "watch", "ok", "no labels yet"
_RANK = {ALARM: 0, WATCH: 1, OK: 2, NO_LABELS: 3}
HISTORY_SECONDS = 7 * 86400
HISTORY_POINTS = 48
MARKS: dict[str, tuple[str, str]] = {
    EventKind.DRIFT_DETECTED: ("drift", charts.RAW_COLOUR),
    EventKind.CALIBRATOR_PROMOTED: ("promoted", "#2ca02c"),
    EventKind.CALIBRATOR_ROLLED_BACK: ("rolled back", "#ff7f0e"),
}


@dataclass
class ModelRow:
    """One model on the overview: its model-wide series and the state of its worst series."""

    model: str
    state: str
    reasons: list[str]
    windows: list[dict[str, Any]]  # per configured window: calibrated and raw stats (or None)
    coverage: dict[str, Any]
    evidence: dict[str, Any] | None  # calibrated, model-wide
    strongest: float  # the largest evidence / threshold ratio of any calibrated series (log scale)
    calibrator: dict[str, Any] | None  # the model-wide one
    latest_event: dict[str, Any] | None
    segments: int
    segment_calibrators: list[dict[str, Any]]  # segments with their own, newest first


def _evidence_ratio(entry: dict[str, Any]) -> float:
    log10 = entry.get("log10_evidence")
    threshold = entry.get("log10_threshold") or 1.0
    return 0.0 if log10 is None else max(0.0, log10 / threshold)


def _where(segment: str) -> str:
    return "model-wide" if segment == MODEL_WIDE else f"segment {segment}"


# Drift flags in words, and whether they call for action now (alarm) or a look (watch).
FLAGS: dict[str, tuple[str, str]] = {
    DriftKind.CALIBRATION: (ALARM, "served confidence miscalibrated"),
    DriftKind.CALIBRATION_TEST: (ALARM, "served confidence miscalibrated (Spiegelhalter test)"),
    DriftKind.CONFIDENCE_SHIFT: (WATCH, "confidence distribution shifted from the reference"),
    DriftKind.RAW_CALIBRATION: (WATCH, "raw scores miscalibrated; the calibrator compensates"),
}


def judge(
    stats: Sequence[WindowStats], evidence: Sequence[dict[str, Any]], drift: Sequence[dict[str, Any]]
) -> tuple[str, list[str]]:
    """The attention a set of series needs, and why, in words (alarm reasons first)."""
    found: dict[str, list[str]] = {ALARM: [], WATCH: []}
    for e in evidence:
        ratio = _evidence_ratio(e)
        if e["alarm"] and e["score"] == Score.CALIBRATED:
            found[ALARM].append(f"served confidence miscalibrated ({_where(e['segment'])}): evidence "
                                "passed its threshold")  # fmt: skip
        elif e["alarm"] and e["score"] == PAIRED:
            found[ALARM].append(f"calibrator serves worse than the raw scores ({_where(e['segment'])})")
        elif e["score"] == Score.CALIBRATED and ratio >= 0.5:
            found[WATCH].append(f"evidence building up ({_where(e['segment'])}): {ratio:.0%} of the way "
                                "to its threshold (log scale)")  # fmt: skip
    for d in drift:
        level, text = FLAGS.get(d["kind"], (WATCH, f"{d['kind']} drift"))
        reason = f"{text} ({_where(d['segment'])})"
        if d["active"] and reason not in found[level]:
            found[level].append(reason)
    if found[ALARM]:
        return ALARM, found[ALARM] + found[WATCH]
    if found[WATCH]:
        return WATCH, found[WATCH]
    if not any(s.labelled for s in stats):
        return NO_LABELS, ["no labelled predictions in any window yet"]
    return OK, []


def _window_cells(stats: Sequence[WindowStats], segment: str, windows: Sequence[str]) -> list[dict[str, Any]]:
    cells = []
    for window in windows:
        found = {s.score: s for s in stats if s.segment == segment and s.window == window}
        cells.append(
            {"window": window, "calibrated": found.get(Score.CALIBRATED), "raw": found.get(Score.RAW)}
        )
    return cells


def coverage_of(stats: WindowStats | None) -> dict[str, Any]:
    """Label coverage and the measured against the estimated accuracy of one calibrated window.

    The estimate is the mean calibrated confidence over *all* its predictions, labelled or not: what
    a calibrated model expects to get right. It needs no label, so it is there before they arrive.
    """
    if stats is None or not stats.predictions:
        return {"window": None, "predictions": 0, "labelled": 0, "coverage": None, "measured": None,
                "estimated": None, "lower": None, "upper": None, "check": None}  # fmt: skip
    return {
        "window": stats.window,
        "predictions": stats.predictions,
        "labelled": stats.labelled,
        "coverage": stats.label_coverage,
        "measured": stats.accuracy,
        "estimated": stats.confidence_sum / stats.predictions,
        "lower": stats.estimated_accuracy_lower,
        "upper": stats.estimated_accuracy_upper,
        "check": stats.estimate_check,
    }


def longest_window(windows: Sequence[str]) -> str:
    """Coverage and accuracy are shown for the longest window: the most labels to judge from."""
    return max(windows, key=parse_duration)


def overview(
    snapshot: Snapshot | None, conn: Connection, settings: Settings
) -> tuple[list[ModelRow], list[dict[str, Any]]]:
    """Every model with traffic, what needs attention first; and the most recent events."""
    recent = list_events(conn, limit=15)
    if snapshot is None:
        return [], recent
    windows = settings.evaluation.windows
    active = {(r.model, r.segment): r for r in calibrator_store.all_active(conn)}
    latest = latest_per_model(conn)
    stats_of, evidence_of, drift_of = (
        _by_model(snapshot.stats),
        _by_model(snapshot.evidence),
        _by_model(snapshot.drift),
    )
    longest_name = longest_window(windows)
    rows = []
    for model in sorted(stats_of):
        stats, evidence = stats_of[model], evidence_of.get(model, [])
        state, reasons = judge(stats, evidence, drift_of.get(model, []))
        wide = [e for e in evidence if e["segment"] == MODEL_WIDE and e["score"] == Score.CALIBRATED]
        calibrated = [e for e in evidence if e["score"] == Score.CALIBRATED]
        longest = next((s for s in stats if s.segment == MODEL_WIDE and s.window == longest_name
                        and s.score == Score.CALIBRATED), None)  # fmt: skip
        record = active.get((model, MODEL_WIDE))
        rows.append(
            ModelRow(
                model=model,
                state=state,
                reasons=reasons,
                windows=_window_cells(stats, MODEL_WIDE, windows),
                coverage=coverage_of(longest),
                evidence=wide[0] if wide else None,
                strongest=max((_evidence_ratio(e) for e in calibrated), default=0.0),
                calibrator=record.as_dict() if record else None,
                latest_event=latest.get(model),
                segments=len({s.segment for s in stats} - {MODEL_WIDE}),
                segment_calibrators=sorted(
                    (r.as_dict() for (m, seg), r in active.items() if m == model and seg != MODEL_WIDE),
                    key=lambda c: -(c["activated_at"] or 0.0),
                ),
            )
        )
    rows.sort(key=lambda r: (_RANK[r.state], -r.strongest, -_ece_of(r), r.model))
    return rows, recent


def _by_model(items: Sequence[Any]) -> dict[str, list[Any]]:
    """Snapshot entries (WindowStats or dicts) per model, in one pass (not one pass per model)."""
    grouped: dict[str, list[Any]] = {}
    for item in items:
        model = item["model"] if isinstance(item, dict) else item.model
        grouped.setdefault(model, []).append(item)
    return grouped


def _ece_of(row: ModelRow) -> float:
    cell = row.windows[0]["calibrated"] if row.windows else None
    return cell.ece if cell is not None and cell.ece is not None else -1.0


@dataclass
class SeriesView:
    """One model's page for one (segment, window)."""

    model: str
    segment: str
    window: str
    segments: list[str]
    windows: list[str]
    state: str
    reasons: list[str]
    raw: WindowStats | None
    calibrated: WindowStats | None
    coverage: dict[str, Any]
    evidence: list[dict[str, Any]]
    drift: list[dict[str, Any]]
    calibrators: list[dict[str, Any]]
    serving: dict[str, Any] | None
    events: list[dict[str, Any]]
    evaluated_at: float


@dataclass(frozen=True)
class History:
    """A series over time: points per period of prediction time, and the decisions within."""

    points: list[charts.TimePoint]
    marks: list[charts.EventMark]
    step: int


def series_view(
    snapshot: Snapshot,
    conn: Connection,
    settings: Settings,
    model: str,
    segment: str,
    window: str,
    now: float,
) -> SeriesView:
    stats = snapshot.for_model(model)
    segments = sorted({s.segment for s in stats}, key=lambda s: (s != MODEL_WIDE, s == OTHER_SEGMENT, s))
    mine = [s for s in stats if s.segment == segment and s.window == window]
    evidence = [e for e in snapshot.evidence if e["model"] == model and e["segment"] == segment]
    drift = [d for d in snapshot.drift if d["model"] == model and d["segment"] == segment]
    state, reasons = judge(mine, evidence, drift)
    history = calibrator_store.list_all(conn, model, limit=100)
    with_report = reported(conn, [r.id for r in history])
    calibrators = [{**r.as_dict(), "has_report": r.id in with_report} for r in history]
    serving = next((c for c in calibrators if c["status"] == "active" and c["segment"] == segment), None)
    if serving is None:
        serving = next(
            (c for c in calibrators if c["status"] == "active" and c["segment"] == MODEL_WIDE), None
        )
    events = list_events(conn, model, limit=50)
    calibrated = next((s for s in mine if s.score == Score.CALIBRATED), None)
    view = SeriesView(
        model, segment, window, segments, list(settings.evaluation.windows), state, reasons,
        next((s for s in mine if s.score == Score.RAW), None), calibrated, coverage_of(calibrated),
        evidence, drift, calibrators, serving, events, snapshot.created_at,
    )  # fmt: skip
    return view


def history(
    conn: Connection, settings: Settings, model: str, segment: str, now: float, events: list[dict[str, Any]]
) -> History:
    """The series' last week (or life, if shorter) from the buckets, with its decisions marked."""
    since, step = time_span(conn, model, now, settings.evaluation.bucket_seconds)
    marks = [
        charts.EventMark(e["ts"], MARKS[e["kind"]][0], MARKS[e["kind"]][1])
        for e in events
        if e["kind"] in MARKS and e["ts"] >= since and e["segment"] in (segment, MODEL_WIDE)
    ]
    return History(over_time_points(conn, settings, model, segment, since, step, now), marks, step)


def time_span(conn: Connection, model: str, now: float, bucket_seconds: int) -> tuple[int, int]:
    """The history's start and period: the last 7 days, or since the model was first seen if younger
    (never under an hour), cut into at most ``HISTORY_POINTS`` periods. Spans of 6 hours or more
    use whole hours (read from the hourly rollup); shorter ones whole buckets."""
    first = first_seen(conn, model)
    start = max(now - HISTORY_SECONDS, min(first if first is not None else now, now - 3600))
    unit = HOUR if now - start >= 6 * HOUR else bucket_seconds
    step = max(1, math.ceil((now - start) / HISTORY_POINTS / unit)) * unit
    return int(math.floor(start / step) * step), int(step)


def over_time_points(
    conn: Connection, settings: Settings, model: str, segment: str, since: int, step: int, now: float
) -> list[charts.TimePoint]:
    """ECE per score and label coverage per period of prediction time, from the buckets."""
    cfg = settings.evaluation
    only: list[str] | None = None
    exclude: list[str] | None = None
    if segment == OTHER_SEGMENT:
        positions = load_positions(conn, [model]).get(model, {})
        cap = settings.max_segments_for(model)
        exclude = [s for s, p in positions.items() if p < cap]
    elif segment != MODEL_WIDE:
        only = [segment]
    found = sketch_history(conn, model, since, step, cfg.fine_bins, cfg.ece_bins, only=only, exclude=exclude)
    points = []
    for k in range(math.ceil((now - since) / step)):
        start = float(since + k * step)
        counts = found.get((Score.CALIBRATED, start)) or found.get((Score.RAW, start))
        ece: dict[str, float | None] = {
            str(score): (sketch.ece(cfg.ece_bins) if sketch.labelled else None)
            for score in (Score.RAW, Score.CALIBRATED)
            if (sketch := found.get((score, start))) is not None
        }
        predictions = counts.predictions if counts else 0
        labelled = counts.labelled if counts else 0
        points.append(
            charts.TimePoint(
                start, predictions, labelled, ece, _accuracy(found.get((Score.CALIBRATED, start)))
            )
        )
    return points


def _accuracy(sketch: CalibrationSketch | None) -> dict[str, float | None]:
    """A period's label-free estimate (its own labels judging the calibrator) and realised accuracy."""
    estimate = estimate_accuracy(sketch) if sketch is not None else None
    if sketch is None or estimate is None:
        return {}
    return {
        "estimated": estimate.estimate,
        "lower": estimate.lower,
        "upper": estimate.upper,
        "realised": sketch.accuracy() if sketch.labelled else None,
    }
