"""The drift policy: which window statistics count as drift, and when a drift becomes an event.

Kinds, judged on every window of every series (model-wide ``*`` included):

* ``calibration`` (actionable): the *calibrated* score's ECE CI lower bound exceeds
  ``ece_threshold`` with at least ``min_labelled`` labels, in a window whose calibrator did not change
  (``WindowStats.calibrator_changed``) — judged on the lower bound, so noise
  alone rarely fires (see docs/architecture.md for the noise floor at a given sample size).
* ``calibration_test`` (actionable): Spiegelhalter's two-sided p-value on the calibrated score is
  below ``p_value_threshold`` with at least ``min_labelled`` labels.
* ``confidence_shift`` (actionable, label-free): PSI of the *raw* confidence distribution against
  the previous period exceeds ``psi_threshold`` with at least ``min_labelled`` predictions. Raw,
  because the calibrated distribution jumps at every promotion and would re-fire after each fix.
* ``raw_calibration`` (reported, never acted on): the same ECE rule on the raw score.

A kind is *active* for a series once it crossed on ``consecutive`` evaluations in a row; an active
kind emits a ``drift_detected`` event at most once per ``cooldown_seconds``. The leader holds the
counters in memory; a new leader starts counting afresh (documented, conservative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.config import DriftConfig
from monitor.evaluation.windows import WindowStats
from monitor.vocabulary import ACTIONABLE_DRIFT, MODEL_WIDE, RECALIBRATE_ON, DriftKind, Score

__all__ = ["Crossing", "DriftEvent", "DriftPolicy", "crossings", "drift_targets"]

ACTIONABLE = ACTIONABLE_DRIFT
KINDS = tuple(DriftKind)
SeriesKind = tuple[str, str, str]  # (model, segment, kind)


@dataclass(frozen=True)
class Crossing:
    """One window statistic beyond its threshold, with the numbers that crossed."""

    model: str
    segment: str
    kind: str
    window: str
    value: float
    threshold: float
    labelled: int
    predictions: int


@dataclass
class DriftEvent:
    model: str
    segment: str
    kind: str
    actionable: bool
    consecutive: int
    crossings: list[Crossing] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actionable": self.actionable,
            "consecutive": self.consecutive,
            "crossings": [asdict(c) for c in self.crossings],
        }


def crossings(stats: WindowStats, cfg: DriftConfig) -> list[Crossing]:
    found: list[Crossing] = []

    def cross(kind: str, value: float, threshold: float) -> None:
        found.append(Crossing(stats.model, stats.segment, kind, stats.window, value, threshold,
                              stats.labelled, stats.predictions))  # fmt: skip

    enough_labels = stats.labelled >= cfg.min_labelled
    # A window that still mixes the previous calibrator's confidences says nothing about the new one:
    # judging it would re-fire every cooldown (and refit) until the window rolled over.
    if stats.score == Score.CALIBRATED and enough_labels and not stats.calibrator_changed:
        if stats.ece_ci_lower is not None and stats.ece_ci_lower > cfg.ece_threshold:
            cross(DriftKind.CALIBRATION, stats.ece_ci_lower, cfg.ece_threshold)
        if stats.spiegelhalter_p is not None and stats.spiegelhalter_p < cfg.p_value_threshold:
            cross(DriftKind.CALIBRATION_TEST, stats.spiegelhalter_p, cfg.p_value_threshold)
    if stats.score == Score.RAW:
        if enough_labels and stats.ece_ci_lower is not None and stats.ece_ci_lower > cfg.ece_threshold:
            cross(DriftKind.RAW_CALIBRATION, stats.ece_ci_lower, cfg.ece_threshold)
        if stats.predictions >= cfg.min_labelled and stats.psi is not None and stats.psi > cfg.psi_threshold:
            cross(DriftKind.CONFIDENCE_SHIFT, stats.psi, cfg.psi_threshold)
    return found


class DriftPolicy:
    def __init__(self, thresholds: Callable[[str, str], DriftConfig]):
        self._thresholds = thresholds
        self._consecutive: dict[SeriesKind, int] = {}
        self._last_event: dict[SeriesKind, float] = {}

    def observe(
        self, stats: list[WindowStats], now: float
    ) -> tuple[dict[SeriesKind, bool], list[DriftEvent]]:
        """Judge one evaluation: every judged (model, segment, kind) with its active flag, and new events."""
        found: dict[SeriesKind, list[Crossing]] = {}
        judged: set[SeriesKind] = set()
        for s in stats:
            cfg = self._thresholds(s.model, s.segment)
            for each in KINDS:
                judged.add((s.model, s.segment, each))
            for c in crossings(s, cfg):
                found.setdefault((c.model, c.segment, c.kind), []).append(c)
        active: dict[SeriesKind, bool] = {}
        events: list[DriftEvent] = []
        for key in sorted(judged):
            model, segment, kind = key
            cfg = self._thresholds(model, segment)
            count = self._consecutive.get(key, 0) + 1 if key in found else 0
            self._consecutive[key] = count
            active[key] = count >= cfg.consecutive
            last = self._last_event.get(key)
            if active[key] and (last is None or now - last >= cfg.cooldown_seconds):
                self._last_event[key] = now
                events.append(DriftEvent(model, segment, kind, kind in ACTIONABLE, count, found[key]))
        return active, events


def drift_targets(events: list[DriftEvent]) -> list[tuple[str, str]]:
    """The series to recalibrate for this tick's drift events: one run per drifting series (the
    policy's cooldown keeps it to one per episode), only for calibration kinds (a label-free shift
    alone cannot be fitted), and when a model drifts model-wide, only the model-wide run: its
    segments are judged again against the fix instead of racing it."""
    drifting = {(e.model, e.segment) for e in events if e.kind in RECALIBRATE_ON}
    model_wide = {model for model, segment in drifting if segment == MODEL_WIDE}
    return sorted((m, s) for m, s in drifting if s == MODEL_WIDE or m not in model_wide)
