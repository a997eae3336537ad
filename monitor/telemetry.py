"""The daemon's own telemetry, shared by the collector, the scheduler and the exporter: the service
counters and gauges, and the mergeable per-bin counters the fold feeds.

Created once per daemon on a registry passed in (no module-level registry). Fed by the working
parts, read by ``exporter``; it imports nothing of calmon but the vocabulary and the sketch layout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.calibration.sketch import LABEL_SUMS, TAIL_BINS
from monitor.vocabulary import MODEL_WIDE, FeedbackOutcome, RecalibrationOutcome

__all__ = ["BinnedCounters", "ServiceMetrics"]

INITIAL_FEEDBACK_OUTCOMES = (FeedbackOutcome.MATCHED, FeedbackOutcome.PENDING)  # "labels are arriving"
RECALIBRATION_OUTCOMES = (
    RecalibrationOutcome.PROMOTED,
    RecalibrationOutcome.REJECTED,
    RecalibrationOutcome.FAILED,
)


class ServiceMetrics:
    """Counters and gauges the daemon updates as it works."""

    def __init__(self, registry: CollectorRegistry):
        self._initialised: set[str] = set()
        self.predictions = Counter("calmon_predictions", "Predictions accepted", ["model"], registry=registry)
        self.feedback = Counter(
            "calmon_feedback",
            "Feedback records by model and outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "calmon_rejected_records", "Rejected records by the field at fault", ["reason"], registry=registry
        )
        self.recalibrations = Counter(
            "calmon_recalibrations",
            "Recalibration runs by series and outcome",
            ["model", "segment", "outcome"],
            registry=registry,
        )
        self.job_runs = Counter(
            "calmon_job_runs", "Scheduler job runs by outcome", ["task", "outcome"], registry=registry
        )
        self.job_duration = Histogram(
            "calmon_job_duration_seconds",
            "Scheduler job duration",
            ["task"],  # not "job": Prometheus reserves that label for the scrape job
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.leader = Gauge(
            "calmon_scheduler_leader", "1 while this replica holds the scheduler lease", registry=registry
        )
        self.request_duration = Histogram(
            "calmon_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.notifications = Counter(
            "calmon_notifications",
            "Notification deliveries by receiver kind and final outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.last_evaluation = Gauge(
            "calmon_last_evaluation_timestamp_seconds",
            "When the snapshot served here was computed",
            registry=registry,
        )

    def initialise(self, models: Iterable[str]) -> None:
        """Create each known model's counters at 0.

        A counter series born at its first increment starts at 1, and ``increase()``/``rate()`` never
        see that first event: the first failed recalibration would not alert. Known models are
        exported at 0 from the evaluation that first sees them, on every replica. Only the series
        the rules and dashboards need (model-wide recalibrations, labelling feedback): this part of
        the exposition is rendered per scrape, ~5 us a sample (the rules also count a series that is
        new in their range, for segment-level runs).
        """
        for model in models:
            if model in self._initialised:
                continue
            self._initialised.add(model)
            self.predictions.labels(model)
            for feedback in INITIAL_FEEDBACK_OUTCOMES:
                self.feedback.labels(model, str(feedback))
            for recalibration in RECALIBRATION_OUTCOMES:
                self.recalibrations.labels(model, MODEL_WIDE, str(recalibration))


class FoldedBucket(Protocol):
    """What the fold reports per bucket it changed (``store.aggregates.BucketDelta``)."""

    @property
    def model(self) -> str: ...
    @property
    def segment(self) -> str: ...
    @property
    def score(self) -> str: ...
    @property
    def moments(self) -> NDArray[np.float64]: ...


class BinnedCounters:
    """Per (model, segment, score, bin) running sums of labelled count, confidence and correct.

    Fed by the fold with the label moments it adds (coarsened to ``ece_bins``); exported as the
    ``calmon_binned_*_total`` counters. The fold has already capped the segments (``store.segments``,
    the one capping rule), so the labels here are the evaluated series' labels.
    """

    def __init__(self, ece_bins: int):
        self.ece_bins = ece_bins
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str, str], NDArray[np.float64]] = {}

    def add(self, deltas: Iterable[FoldedBucket]) -> None:
        with self._lock:
            for delta in deltas:
                fine = delta.moments.shape[1] - TAIL_BINS  # the tail repeats the top bins
                if fine % self.ece_bins:
                    raise ValueError(f"ece_bins {self.ece_bins} must divide fine bins {fine}")
                sums = delta.moments[list(LABEL_SUMS), :fine]
                coarse = sums.reshape(len(LABEL_SUMS), self.ece_bins, fine // self.ece_bins).sum(axis=2)
                if not coarse[0].any():
                    continue
                key = (delta.model, delta.segment, str(delta.score))
                if key in self._sums:
                    self._sums[key] += coarse
                else:
                    self._sums[key] = coarse.copy()

    def items(self) -> list[tuple[tuple[str, str, str], NDArray[np.float64]]]:
        with self._lock:
            return [(key, value.copy()) for key, value in self._sums.items()]
