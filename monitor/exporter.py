"""Prometheus exposition: live service counters plus a custom collector over the latest snapshot.

Nothing here queries the database: a scrape renders the snapshot the scheduler computed and the
counters the request handlers and jobs incremented. The registry is passed in (no global state).

Gauges from the snapshot carry ``model, segment, window, score``. The mergeable per-bin counters
(``calmon_binned_*_total``, labels ``model, segment, score, bin``) count *labelled* predictions as
their labels are folded into the sketch buckets; PromQL alone turns them into an ECE over any range
and across replicas:

    sum by (model) (abs(sum by (model, bin) (increase(calmon_binned_correct_total[1h]))
                      - sum by (model, bin) (increase(calmon_binned_confidence_sum_total[1h]))))
      / sum by (model) (increase(calmon_binned_predictions_total[1h]))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.evaluation.snapshot import Snapshot, SnapshotHolder
from monitor.evaluation.windows import WindowStats
from monitor.telemetry import BinnedCounters
from monitor.textformat import render
from monitor.vocabulary import Score

__all__ = ["Exposition", "SnapshotCollector"]

WINDOW_LABELS = ("model", "segment", "window", "score")


# Scalar window gauges: metric name -> (help, WindowStats field).
SCALARS = {
    "calmon_expected_calibration_error": ("Expected calibration error (equal-width bins)", "ece"),
    "calmon_expected_calibration_error_ci_lower": ("Lower bound of the ECE bootstrap CI", "ece_ci_lower"),
    "calmon_expected_calibration_error_ci_upper": ("Upper bound of the ECE bootstrap CI", "ece_ci_upper"),
    "calmon_maximum_calibration_error": ("Maximum calibration error over bins", "mce"),
    "calmon_brier_score": ("Brier score of the confidence", "brier"),
    "calmon_accuracy_ratio": ("Share of labelled predictions that were correct", "accuracy"),
    "calmon_mean_confidence": ("Mean confidence of labelled predictions", "mean_confidence"),
    "calmon_debiased_calibration_error": ("Debiased L2 calibration error (Kumar et al.)", "debiased_ce"),
    "calmon_calibration_z_score": ("Spiegelhalter Z of calibration", "spiegelhalter_z"),
    "calmon_confidence_psi": ("PSI of the confidence distribution vs the previous period", "psi"),
    "calmon_confidence_js_distance": ("Jensen-Shannon distance vs the previous period", "js_distance"),
}


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = WINDOW_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _confidence_buckets(histogram: list[float]) -> list[tuple[str, float]]:
    """Cumulative ``le`` buckets of a window's confidence histogram (gauge histogram form)."""
    edges = np.linspace(0.0, 1.0, len(histogram) + 1)[1:]
    cumulative = np.cumsum(histogram)
    buckets = [(f"{edge:.4g}", float(count)) for edge, count in zip(edges[:-1], cumulative[:-1], strict=True)]
    buckets.append(("+Inf", float(cumulative[-1])))
    return buckets


ESTIMATES = {
    "calmon_estimated_accuracy": (
        "Label-free accuracy: mean served (calibrated) confidence over every prediction of the window",
        "estimated_accuracy",
    ),
    "calmon_estimated_accuracy_lower": (
        "Lower bound of the 95% interval of the estimated accuracy (sampling plus calibrator bias)",
        "estimated_accuracy_lower",
    ),
    "calmon_estimated_accuracy_upper": (
        "Upper bound of the 95% interval of the estimated accuracy (sampling plus calibrator bias)",
        "estimated_accuracy_upper",
    ),
    "calmon_estimated_accuracy_bias": (
        "Realised minus estimated accuracy on the labelled part: the calibrator's measured bias",
        "estimate_bias",
    ),
}
FloorOf = Callable[[str, str], float | None]


def estimate_families(stats: list[WindowStats], floor_of: FloorOf | None = None) -> Iterator[Metric]:
    """The label-free accuracy estimate per window, and the configured floors it is alerted against."""
    labels = ("model", "segment", "window")
    families = {name: _gauge(name, doc, labels) for name, (doc, _) in ESTIMATES.items()}
    floor = _gauge(
        "calmon_accuracy_floor",
        "drift.accuracy_floor of the series (alert when the estimate's upper bound is below)",
        ("model", "segment"),
    )
    floors: dict[tuple[str, str], float] = {}
    for s in stats:
        if s.score != Score.CALIBRATED or s.estimated_accuracy is None:
            continue
        for name, (_, field) in ESTIMATES.items():
            value = getattr(s, field)
            if value is not None:
                families[name].add_metric([s.model, s.segment, s.window], float(value))
        configured = floor_of(s.model, s.segment) if floor_of is not None else None
        if configured is not None:
            floors[(s.model, s.segment)] = configured
    for (model, segment), value in sorted(floors.items()):
        floor.add_metric([model, segment], value)
    yield from (*families.values(), floor)


def advice_families(stats: list[WindowStats]) -> Iterator[Metric]:
    """Per target precision: the advised calibrated-confidence threshold and the share it accepts."""
    labels = ("model", "segment", "window", "target")
    threshold = _gauge(
        "calmon_advised_threshold",
        "Lowest calibrated confidence to accept for the target precision among accepted answers "
        "(met with probability >= 1 - advice.alpha); absent when no threshold reaches the target",
        labels,
    )
    coverage = _gauge(
        "calmon_advised_coverage",
        "Share of the window's predictions the advised threshold accepts (0: none)",
        labels,
    )
    curve_labels = ("model", "segment", "window", "threshold")
    accepted = _gauge(
        "calmon_accept_coverage",
        "Risk-coverage curve: share of the window's predictions whose calibrated confidence is at least "
        "the threshold (advice.curve, at the nearest bin edge)",
        curve_labels,
    )
    precision = _gauge(
        "calmon_accept_precision",
        "Risk-coverage curve: precision of the labelled predictions at or above the threshold "
        "(absent when none is labelled)",
        curve_labels,
    )
    for s in stats:
        for advice in s.advice:
            values = [s.model, s.segment, s.window, f"{advice['target']:g}"]
            if advice["threshold"] is not None:
                threshold.add_metric(values, float(advice["threshold"]))
            coverage.add_metric(values, float(advice["coverage"]))
        for point in s.risk_coverage:
            values = [s.model, s.segment, s.window, f"{point['threshold']:.4g}"]
            accepted.add_metric(values, float(point["coverage"]))
            if point["precision"] is not None:
                precision.add_metric(values, float(point["precision"]))
    yield from (threshold, coverage, accepted, precision)


def window_families(stats: list[WindowStats]) -> Iterator[Metric]:
    """Every per-window gauge family of one snapshot."""
    families = {name: _gauge(name, doc) for name, (doc, _) in SCALARS.items()}
    labelled = _gauge("calmon_labelled_predictions", "Labelled predictions made in the window")
    window_predictions = _gauge("calmon_window_predictions", "Predictions made in the window")
    coverage = _gauge("calmon_label_coverage_ratio", "Share of the window's predictions that are labelled")
    reliability = _gauge(
        "calmon_reliability_bin_accuracy_ratio", "Accuracy per confidence bin", (*WINDOW_LABELS, "bin")
    )
    changed = _gauge(
        "calmon_window_calibrator_changed",
        "1 while the window mixes the confidences of the serving calibrator and its predecessor",
        ("model", "segment", "window"),
    )
    histogram = GaugeHistogramMetricFamily(
        "calmon_window_confidence",
        "Confidence distribution of the window's predictions",
        labels=list(WINDOW_LABELS),
    )
    for s in stats:
        values = [s.model, s.segment, s.window, s.score]
        for name, (_, field) in SCALARS.items():
            value = getattr(s, field)
            if value is not None:
                families[name].add_metric(values, float(value))
        if s.score == Score.CALIBRATED:
            changed.add_metric([s.model, s.segment, s.window], 1.0 if s.calibrator_changed else 0.0)
        labelled.add_metric(values, float(s.labelled))
        window_predictions.add_metric(values, float(s.predictions))
        coverage.add_metric(values, float(s.label_coverage))
        for row in s.reliability:
            if row["accuracy"] is not None:
                reliability.add_metric([*values, str(row["bin"])], float(row["accuracy"]))
        if s.histogram:
            histogram.add_metric(values, _confidence_buckets(s.histogram), gsum_value=s.confidence_sum)
    yield from families.values()
    yield from (labelled, window_predictions, coverage, reliability, histogram, changed)


def state_families(snapshot: Snapshot | None) -> Iterator[Metric]:
    """The serving calibrators and the drift flags of one snapshot."""
    info = GaugeMetricFamily(
        "calmon_calibrator_info", "The calibrator serving each model and segment",
        labels=["model", "segment", "version", "method"],
    )  # fmt: skip
    for entry in snapshot.calibrators if snapshot is not None else []:
        info.add_metric([entry["model"], entry["segment"], str(entry["version"]), entry["method"]], 1.0)
    yield info
    drift = GaugeMetricFamily(
        "calmon_drift_detected", "1 while the drift policy finds this kind of drift (see docs)",
        labels=["model", "segment", "kind"],
    )  # fmt: skip
    for entry in snapshot.drift if snapshot is not None else []:
        drift.add_metric([entry["model"], entry["segment"], entry["kind"]], 1.0 if entry["active"] else 0.0)
    yield drift
    yield from evidence_families(snapshot)


def evidence_families(snapshot: Snapshot | None) -> Iterator[Metric]:
    """The drift detectors: evidence against its threshold (log10), the alarm, the change point."""
    labels = ["model", "segment", "score"]
    evidence = GaugeMetricFamily(
        "calmon_drift_evidence_log10",
        "log10 of the e-detector statistic against calibration error <= drift.tolerance "
        "(score=paired: served score worse than raw); alarms at calmon_drift_evidence_threshold_log10",
        labels=labels,
    )
    threshold = GaugeMetricFamily(
        "calmon_drift_evidence_threshold_log10",
        "log10 of the alarm threshold: the mean evaluations to a false alarm at the tolerance",
        labels=labels,
    )
    alarm = GaugeMetricFamily("calmon_drift_alarm", "1 while the e-detector is in alarm", labels=labels)
    change = GaugeMetricFamily(
        "calmon_drift_change_point_timestamp_seconds",
        "Estimated start of the drift (prediction time) while in alarm",
        labels=labels,
    )
    for entry in snapshot.evidence if snapshot is not None else []:
        values = [entry["model"], entry["segment"], entry["score"]]
        if entry["log10_evidence"] is not None:
            evidence.add_metric(values, float(entry["log10_evidence"]))
        threshold.add_metric(values, float(entry["log10_threshold"]))
        alarm.add_metric(values, 1.0 if entry["alarm"] else 0.0)
        if entry["alarm"] and entry["change_point"] is not None:
            change.add_metric(values, float(entry["change_point"]))
    yield from (evidence, threshold, alarm, change)


def binned_families(binned: BinnedCounters) -> Iterator[Metric]:
    """The mergeable per-bin counters, from which PromQL computes an ECE over any range."""
    bin_labels = ["model", "segment", "score", "bin"]
    count = CounterMetricFamily(
        "calmon_binned_predictions", "Labelled predictions per confidence bin", labels=bin_labels
    )
    confidence = CounterMetricFamily(
        "calmon_binned_confidence_sum", "Sum of confidence of labelled predictions per bin", labels=bin_labels
    )
    correct = CounterMetricFamily(
        "calmon_binned_correct", "Correct labelled predictions per bin", labels=bin_labels
    )
    for (model, segment, score), sums in sorted(binned.items(), key=lambda item: item[0]):  # stable order
        for b in range(sums.shape[1]):
            labels = [model, segment, score, str(b)]
            count.add_metric(labels, float(sums[0, b]))
            confidence.add_metric(labels, float(sums[1, b]))
            correct.add_metric(labels, float(sums[2, b]))
    yield from (count, confidence, correct)


class SnapshotCollector(Collector):
    """Renders the latest snapshot and the binned counters on every scrape (no I/O)."""

    def __init__(self, holder: SnapshotHolder, binned: BinnedCounters, floor_of: FloorOf | None = None):
        self._holder = holder
        self._binned = binned
        self._floor_of = floor_of

    def collect(self) -> Iterator[Metric]:
        snapshot = self._holder.get()
        yield from window_families(snapshot.stats if snapshot is not None else [])
        yield from estimate_families(snapshot.stats if snapshot is not None else [], self._floor_of)
        yield from advice_families(snapshot.stats if snapshot is not None else [])
        yield from state_families(snapshot)
        yield from binned_families(self._binned)


class Exposition:
    """What ``/metrics`` serves: the live registry, rendered per scrape (a few dozen samples), plus the
    snapshot part, rendered once per evaluation by the scheduler (``refresh``).

    Rendering ~20k snapshot samples with prometheus_client took 115 ms per scrape (p50, measured at
    360 window series); a scrape now costs the live part and a byte copy. The snapshot part is
    rendered by ``textformat.render`` (the same bytes, memoised name escaping: 1,000 series are 390k
    samples). The two parts never share a
    metric family, so their concatenation is one valid exposition.
    """

    def __init__(
        self,
        live: CollectorRegistry,
        holder: SnapshotHolder,
        binned: BinnedCounters,
        floor_of: FloorOf | None = None,
    ):
        self.live = live
        self.snapshot_registry = CollectorRegistry(auto_describe=False)
        self.snapshot_registry.register(SnapshotCollector(holder, binned, floor_of))
        self._lock = threading.Lock()
        self._cached = b""

    def refresh(self) -> None:
        text = render(self.snapshot_registry)
        with self._lock:
            self._cached = text

    def render(self) -> bytes:
        with self._lock:
            cached = self._cached
        return generate_latest(self.live) + cached
