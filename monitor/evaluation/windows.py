"""WindowStats for every (model, segment, window, score), from sketch buckets only.

A window ``W`` evaluated at ``now`` covers the buckets whose start lies in
``[floor_bucket(now - W), now]``: whole buckets, so up to one bucket longer than ``W``. It is judged
only on labelled predictions *made* inside it (buckets are keyed by prediction time) and reports how
many of its predictions are still unlabelled. The reference for distribution shift is the previous
period of the same length. Segments beyond a model's cap are merged into ``other``; the model-wide
series has segment ``*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import Connection

from monitor.calibration.advice import advise, curve_points
from monitor.calibration.drift import js_distance, psi
from monitor.calibration.estimate import AccuracyEstimate, estimate_accuracy, labelled_bias
from monitor.calibration.sketch import CalibrationSketch, Moment
from monitor.store.aggregates import SeriesKey, load_sketches
from monitor.store.segments import CapOf, load_positions, registered_series
from monitor.vocabulary import MODEL_WIDE, OTHER_SEGMENT, Score

__all__ = [
    "WindowSpec",
    "WindowStats",
    "add_advice",
    "cap_segments",
    "evaluate",
    "evaluate_periods",
    "mark_calibrator_changes",
    "measure_bias",
    "window_stats",
]


@dataclass(frozen=True)
class WindowSpec:
    name: str
    seconds: int


@dataclass
class WindowStats:
    model: str
    segment: str
    window: str
    score: str
    predictions: int
    labelled: int
    missing_labels: int
    label_coverage: float
    accuracy: float | None = None
    mean_confidence: float | None = None
    ece: float | None = None
    ece_ci_lower: float | None = None
    ece_ci_upper: float | None = None
    mce: float | None = None
    brier: float | None = None
    debiased_ce: float | None = None
    spiegelhalter_z: float | None = None
    spiegelhalter_p: float | None = None
    psi: float | None = None
    js_distance: float | None = None
    reliability: list[dict[str, Any]] = field(default_factory=list)
    histogram: list[float] = field(default_factory=list)  # all predictions, ece_bins bins
    reference_histogram: list[float] = field(default_factory=list)  # what psi compared against
    confidence_sum: float = 0.0  # over all predictions of the window (the histogram's sum)
    # The calibrator serving this series changed within the window, so the calibrated statistics mix
    # the confidences of two calibrators: reported, but not judged by the drift policy or the alerts.
    calibrator_changed: bool = False
    # Label-free accuracy (calibrated score only; calibration.estimate): mean served confidence over
    # every prediction, its interval, the calibrator's bias measured on the labels of the series'
    # most-labelled window (``estimate_bias_window``), and the verdict: "ok", "biased" (the bias is
    # significant: the interval is widened by it), "unchecked" (no labels in any window).
    estimated_accuracy: float | None = None
    estimated_accuracy_lower: float | None = None
    estimated_accuracy_upper: float | None = None
    estimate_bias: float | None = None
    estimate_bias_window: str | None = None
    estimate_check: str | None = None
    # Threshold advice per configured target precision (calibrated score only; calibration.advice)
    advice: list[dict[str, Any]] = field(default_factory=list)
    # The risk-coverage curve at advice.curve's thresholds (their nearest bin edges), highest first
    risk_coverage: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # Shallow: the reliability rows and the histogram are shared, not copied (read-only, and
        # a deep ``asdict`` of every series was the larger part of publishing a snapshot).
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(WindowStats))


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def window_stats(
    key: SeriesKey,
    window: str,
    sketch: CalibrationSketch,
    reference: CalibrationSketch | None,
    ece_bins: int,
    n_boot: int = 500,
) -> WindowStats:
    model, segment, score = key
    n, n_l = sketch.predictions, sketch.labelled
    stats = WindowStats(model, segment, window, score, n, n_l, n - n_l, n_l / n if n else 0.0)
    stats.histogram = sketch.histogram(ece_bins).tolist()
    stats.confidence_sum = float(sketch.uniform[Moment.SUM_P].sum())
    if n and reference is not None and reference.predictions:
        stats.reference_histogram = reference.histogram(ece_bins).tolist()
        stats.psi = _finite(psi(reference.histogram(ece_bins), sketch.histogram(ece_bins)))
        stats.js_distance = _finite(js_distance(reference.histogram(ece_bins), sketch.histogram(ece_bins)))
    if n_l == 0:
        return stats
    metrics = sketch.metrics(ece_bins)
    low, high = sketch.ece_bootstrap_ci(ece_bins, n_boot=n_boot, seed=0)
    stats.accuracy = metrics.accuracy
    stats.mean_confidence = metrics.mean_confidence
    stats.ece, stats.ece_ci_lower, stats.ece_ci_upper = metrics.ece, low, high
    stats.mce = metrics.mce
    stats.brier = metrics.brier
    stats.debiased_ce = metrics.debiased_ce
    stats.spiegelhalter_z = _finite(metrics.spiegelhalter_z)
    stats.spiegelhalter_p = _finite(metrics.spiegelhalter_p)
    stats.reliability = sketch.reliability_table(ece_bins).rows()
    return stats


def _set_estimate(stats: WindowStats, estimate: AccuracyEstimate | None, bias_window: str | None) -> None:
    if estimate is None:
        return
    stats.estimated_accuracy = estimate.estimate
    stats.estimated_accuracy_lower, stats.estimated_accuracy_upper = estimate.lower, estimate.upper
    stats.estimate_bias = estimate.bias
    stats.estimate_check = estimate.check
    stats.estimate_bias_window = bias_window if estimate.bias is not None else None


def measure_bias(
    results: list[WindowStats], sketches: dict[tuple[SeriesKey, str], CalibrationSketch]
) -> None:
    """Every calibrated window's label-free estimate (``window_stats`` leaves it to this pass), judged
    against the calibrator's bias measured on the window of the same
    series with the most labels (usually the longest): the calibrator is the same, and a short window's
    few labels cannot see a bias of a few points (the digits case in benchmarks/accuracy.py), nor can
    the newest window, whose labels have not arrived, see anything."""
    by_series: dict[SeriesKey, list[WindowStats]] = {}
    for s in results:
        if s.score == Score.CALIBRATED:
            by_series.setdefault((s.model, s.segment, s.score), []).append(s)
    for key, series in by_series.items():
        donor = max(series, key=lambda s: s.labelled)
        measured = labelled_bias(sketches[(key, donor.window)]) if donor.labelled else None
        for s in series:
            own = estimate_accuracy(sketches[(key, s.window)], bias=measured)
            _set_estimate(s, own, donor.window)


def add_advice(
    results: list[WindowStats],
    sketches: dict[tuple[SeriesKey, str], CalibrationSketch],
    targets_of: Callable[[str, str], Sequence[float]],
    alpha: float,
    curve: Sequence[float] = (),
) -> None:
    """Each calibrated window's advised threshold for each target precision of its series, and its
    risk-coverage curve at the ``curve`` thresholds."""
    for s in results:
        if s.score == Score.CALIBRATED and s.labelled:
            sketch = sketches[((s.model, s.segment, s.score), s.window)]
            s.advice = [asdict(advise(sketch, target, alpha)) for target in targets_of(s.model, s.segment)]
            s.risk_coverage = [asdict(p) for p in curve_points(sketch, curve, alpha)] if curve else []


def cap_segments(
    sketches: dict[SeriesKey, CalibrationSketch], series_of: Callable[[str, str], str] | None = None
) -> dict[SeriesKey, CalibrationSketch]:
    """Merge each segment into its series (``store.segments``: its own or ``other``), add ``*``."""
    out: dict[SeriesKey, CalibrationSketch] = {}
    for (model, segment, score), sketch in sketches.items():
        name = series_of(model, segment) if series_of is not None else segment
        for target in (name, MODEL_WIDE):
            key = (model, target, score)
            out[key] = (
                out[key].merge(sketch)
                if key in out
                else CalibrationSketch(sketch.fine_bins, sketch.moments.copy())
            )
    return out


def evaluate_periods(
    windows: list[WindowSpec],
    periods: dict[str, tuple[dict[SeriesKey, CalibrationSketch], dict[SeriesKey, CalibrationSketch]]],
    ece_bins: int,
    series_of: Callable[[str, str], str] | None = None,
    n_boot: int = 500,
    reference: dict[SeriesKey, CalibrationSketch] | None = None,
    advice_targets: Callable[[str, str], Sequence[float]] | None = None,
    advice_alpha: float = 0.05,
    advice_curve: Sequence[float] = (),
) -> list[WindowStats]:
    """WindowStats from (current, previous) sketches per window, e.g. from RollingWindows. Both
    periods map segments the same way, so a segment's data never moves between series over time.
    With ``reference`` (``evaluation.reference``), shift is measured against it, not the previous
    period."""
    results: list[WindowStats] = []
    sketches: dict[tuple[SeriesKey, str], CalibrationSketch] = {}
    fixed = None
    if reference is not None:
        fixed = cap_segments({k: v for k, v in reference.items() if v.predictions}, series_of)
    for spec in windows:
        current_raw, previous_raw = periods[spec.name]
        current = cap_segments({k: v for k, v in current_raw.items() if v.predictions}, series_of)
        previous = (
            fixed
            if fixed is not None
            else cap_segments({k: v for k, v in previous_raw.items() if v.predictions}, series_of)
        )
        for key in sorted(current):
            results.append(window_stats(key, spec.name, current[key], previous.get(key), ece_bins, n_boot))
            sketches[(key, spec.name)] = current[key]
    measure_bias(results, sketches)
    if advice_targets is not None:
        add_advice(results, sketches, advice_targets, advice_alpha, advice_curve)
    return results


def evaluate(
    conn: Connection,
    windows: list[WindowSpec],
    now: float,
    bucket_seconds: int,
    fine_bins: int,
    ece_bins: int,
    cap_of: CapOf | None = None,
    n_boot: int = 500,
    advice_targets: Callable[[str, str], Sequence[float]] | None = None,
    advice_curve: Sequence[float] = (),
) -> list[WindowStats]:
    """WindowStats for every series and window, summing the buckets in the database (no state)."""
    periods = {}
    for spec in windows:
        since = math.floor((now - spec.seconds) / bucket_seconds) * bucket_seconds
        periods[spec.name] = (
            load_sketches(conn, fine_bins, since=since),
            load_sketches(conn, fine_bins, since=since - spec.seconds, until=since),
        )
    series_of = registered_series(load_positions(conn), cap_of) if cap_of is not None else None
    return evaluate_periods(
        windows,
        periods,
        ece_bins,
        series_of,
        n_boot,
        advice_targets=advice_targets,
        advice_curve=advice_curve,
    )


def mark_calibrator_changes(
    stats: list[WindowStats],
    window_seconds: dict[str, int],
    changes: dict[tuple[str, str], float],
    now: float,
) -> None:
    """Flag the series whose serving calibrator changed within their window.

    A prediction keeps the calibrated confidence applied at ingest, so after a promotion or rollback
    a window mixes two calibrators until it has rolled over. A segment is served by its own
    calibrator or the model-wide one (``*``); the model-wide series and the capped ``other`` series
    hold every segment, so any change of the model counts for them.
    """
    latest_of_model: dict[str, float] = {}
    for (model, _), ts in changes.items():
        latest_of_model[model] = max(ts, latest_of_model.get(model, ts))
    for s in stats:
        if s.segment in (MODEL_WIDE, OTHER_SEGMENT):
            changed = latest_of_model.get(s.model)
        else:
            found = [changes[k] for k in ((s.model, s.segment), (s.model, MODEL_WIDE)) if k in changes]
            changed = max(found) if found else None
        s.calibrator_changed = changed is not None and changed > now - window_seconds[s.window]
