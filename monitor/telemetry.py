"""The daemon's own counters and gauges, shared by the collector, the scheduler and the exporter.

Created once per daemon on a registry passed in (no module-level registry).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

INITIAL_FEEDBACK_OUTCOMES = ("matched", "pending")  # what means "labels are arriving"
RECALIBRATION_OUTCOMES = ("promoted", "rejected", "failed")


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
            for outcome in INITIAL_FEEDBACK_OUTCOMES:
                self.feedback.labels(model, outcome)
            for outcome in RECALIBRATION_OUTCOMES:
                self.recalibrations.labels(model, "*", outcome)
