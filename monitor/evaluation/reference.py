"""The fixed label-free reference a confidence shift is measured against, per model.

Comparing with the previous period alarms twice for a one-off anomaly — when it happens and again
when it becomes the reference — and follows a slow drift without ever alarming. The reference is
fixed instead: the period the serving model-wide calibrator was fitted on, else the configured
``drift.baseline_start``/``baseline_end``, else the model's first full window of traffic. It only
moves when one of those changes (a promotion, a rollback, a configuration change).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection

from monitor.calibration.sketch import CalibrationSketch
from monitor.config import DriftConfig
from monitor.store.aggregates import SeriesKey, first_buckets, load_sketches
from monitor.store.calibrators import CalibratorRecord
from monitor.vocabulary import MODEL_WIDE, Score

__all__ = ["ReferenceSketches", "reference_period"]

Period = tuple[float, float]


def reference_period(
    record: CalibratorRecord | None, cfg: DriftConfig, first_bucket: float | None, window: int, now: float
) -> Period | None:
    """Where a model's reference lies, or None while its first window is still filling."""
    if record is not None and record.fit_start is not None and record.fit_end is not None:
        return (record.fit_start, record.fit_end + 1e-6)
    if cfg.baseline_start is not None and cfg.baseline_end is not None:
        return (cfg.baseline_start, cfg.baseline_end)
    if first_bucket is not None and now >= first_bucket + window:
        return (first_bucket, first_bucket + window)
    return None


class ReferenceSketches:
    """Raw-confidence sketches of each model's reference period, reloaded only when it moves."""

    def __init__(self, fine_bins: int, window_seconds: int, drift_for: Callable[[str, str], DriftConfig]):
        self.fine_bins = fine_bins
        self.window_seconds = window_seconds
        self.drift_for = drift_for
        self._cache: dict[str, tuple[Period, dict[SeriesKey, CalibrationSketch]]] = {}
        self._first: dict[str, float] = {}

    def load(
        self, conn: Connection, models: set[str], active: list[CalibratorRecord], now: float
    ) -> dict[SeriesKey, CalibrationSketch]:
        """The reference sketch of every raw series of ``models`` (segments as stored)."""
        serving = {r.model: r for r in active if r.segment == MODEL_WIDE}
        if models - set(self._first):
            self._first.update(first_buckets(conn))
        found: dict[SeriesKey, CalibrationSketch] = {}
        for model in sorted(models):
            cfg = self.drift_for(model, MODEL_WIDE)
            period = reference_period(
                serving.get(model), cfg, self._first.get(model), self.window_seconds, now
            )
            if period is None:
                continue
            cached = self._cache.get(model)
            if cached is None or cached[0] != period:
                sketches = load_sketches(
                    conn, self.fine_bins, period[0], period[1], model=model, score=Score.RAW
                )
                cached = self._cache[model] = (period, sketches)
            found.update(cached[1])
        for gone in set(self._cache) - models:
            del self._cache[gone]
        return found
