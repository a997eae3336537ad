"""The drift policy: which statistics count as drift, and when a drift becomes an event.

``drift.policy`` chooses how calibration drift is decided (docs/architecture.md, "Drift decisions"):

* ``evidence`` (default): the series' anytime-valid e-detector (``evaluation.evidence``) alarms —
  ``calibration`` on the served score (acted on), ``raw_calibration`` on the raw one (reported).
  Its guarantee: on a series whose calibration error is at most ``tolerance``, the mean number of
  evaluations before a false alarm is at least ``false_alarm_every``. The event carries the
  estimated change point.
* ``ece_interval``: the window ECE's CI lower bound above ``ece_threshold`` on ``consecutive``
  evaluations (the first-wave rule).
* ``spiegelhalter``: ``calibration_test``, Spiegelhalter's p-value below ``p_value_threshold``.
* ``fixed_window``: the first window's ECE CI lower bound above ``tolerance``, tested once per
  disjoint window (at each window boundary) instead of at every evaluation.

Whatever the policy, ``confidence_shift`` (label-free) compares the raw confidence histogram with a
fixed reference (``evaluation.reference``) and fires above ``psi_threshold``. A window whose serving
calibrator changed is never judged on its calibrated numbers. A kind is *active* for a series once
it crossed on ``consecutive`` evaluations in a row (evidence alarms at once); an active kind emits a
``drift_detected`` event at most once per ``cooldown_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.config import DriftConfig
from monitor.evaluation.evidence import SeriesEvidence
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
    change_point: float | None = None


@dataclass
class DriftEvent:
    model: str
    segment: str
    kind: str
    actionable: bool
    consecutive: int
    crossings: list[Crossing] = field(default_factory=list)

    @property
    def change_point(self) -> float | None:
        found = [c.change_point for c in self.crossings if c.change_point is not None]
        return min(found) if found else None

    def payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actionable": self.actionable,
            "consecutive": self.consecutive,
            "change_point": self.change_point,
            "crossings": [asdict(c) for c in self.crossings],
        }


def crossings(stats: WindowStats, cfg: DriftConfig, boundary: bool = True) -> list[Crossing]:
    """The window rules: confidence shift always, calibration for the fixed-sample policies.

    ``boundary``: this evaluation closes a disjoint window (``fixed_window`` only tests then)."""
    found: list[Crossing] = []

    def cross(kind: str, value: float, threshold: float) -> None:
        found.append(Crossing(stats.model, stats.segment, kind, stats.window, value, threshold,
                              stats.labelled, stats.predictions))  # fmt: skip

    enough_labels = stats.labelled >= cfg.min_labelled
    lower = stats.ece_ci_lower
    # A window that still mixes the previous calibrator's confidences says nothing about the new one:
    # judging it would re-fire every cooldown (and refit) until the window rolled over.
    if stats.score == Score.CALIBRATED and enough_labels and not stats.calibrator_changed:
        if cfg.policy == "ece_interval" and lower is not None and lower > cfg.ece_threshold:
            cross(DriftKind.CALIBRATION, lower, cfg.ece_threshold)
        if cfg.policy == "fixed_window" and boundary and lower is not None and lower > cfg.tolerance:
            cross(DriftKind.CALIBRATION, lower, cfg.tolerance)
        p_value = stats.spiegelhalter_p
        if cfg.policy == "spiegelhalter" and p_value is not None and p_value < cfg.p_value_threshold:
            cross(DriftKind.CALIBRATION_TEST, p_value, cfg.p_value_threshold)
    if stats.score == Score.RAW:
        if cfg.policy != "evidence" and enough_labels and lower is not None and lower > cfg.ece_threshold:
            cross(DriftKind.RAW_CALIBRATION, lower, cfg.ece_threshold)
        if stats.predictions >= cfg.min_labelled and stats.psi is not None and stats.psi > cfg.psi_threshold:
            cross(DriftKind.CONFIDENCE_SHIFT, stats.psi, cfg.psi_threshold)
    return found


EVIDENCE_KINDS: dict[str, DriftKind] = {
    Score.CALIBRATED: DriftKind.CALIBRATION,
    Score.RAW: DriftKind.RAW_CALIBRATION,
}


def evidence_crossings(
    verdicts: list[SeriesEvidence], cfg_of: Callable[[str, str], DriftConfig]
) -> list[Crossing]:
    """The e-detector alarms, for the series whose policy is ``evidence``."""
    found: list[Crossing] = []
    for v in verdicts:
        kind = EVIDENCE_KINDS.get(v.score)
        if kind is None or not v.alarm or cfg_of(v.model, v.segment).policy != "evidence":
            continue
        found.append(
            Crossing(
                v.model,
                v.segment,
                kind,
                "evidence",
                v.log_evidence / math.log(10),
                math.log10(v.threshold),
                v.labels,
                v.labels,
                v.change_point,
            )
        )
    return found


class DriftPolicy:
    def __init__(
        self, thresholds: Callable[[str, str], DriftConfig], window_seconds: dict[str, int] | None = None
    ):
        self._thresholds = thresholds
        self._window_seconds = window_seconds or {}
        self._consecutive: dict[SeriesKind, int] = {}
        self._last_event: dict[SeriesKind, float] = {}
        self._last_judged: float | None = None

    def _boundary(self, window: str, now: float) -> bool:
        """Whether a disjoint window of this length closed since the previous evaluation."""
        seconds = self._window_seconds.get(window)
        if seconds is None or self._last_judged is None:
            return False
        return math.floor(now / seconds) > math.floor(self._last_judged / seconds)

    def observe(
        self, stats: list[WindowStats], now: float, evidence: list[SeriesEvidence] | None = None
    ) -> tuple[dict[SeriesKind, bool], list[DriftEvent]]:
        """Judge one evaluation: every judged (model, segment, kind) with its active flag, and new events."""
        found: dict[SeriesKind, list[Crossing]] = {}
        judged: set[SeriesKind] = set()
        first_window = stats[0].window if stats else None
        for s in stats:
            cfg = self._thresholds(s.model, s.segment)
            for each in KINDS:
                judged.add((s.model, s.segment, each))
            if cfg.policy == "fixed_window" and s.window != first_window and s.score == Score.CALIBRATED:
                continue
            for c in crossings(s, cfg, self._boundary(s.window, now)):
                found.setdefault((c.model, c.segment, c.kind), []).append(c)
        for c in evidence_crossings(evidence or [], self._thresholds):
            judged.add((c.model, c.segment, c.kind))
            found.setdefault((c.model, c.segment, c.kind), []).append(c)
        self._last_judged = now
        active: dict[SeriesKind, bool] = {}
        events: list[DriftEvent] = []
        for key in sorted(judged):
            model, segment, kind = key
            cfg = self._thresholds(model, segment)
            count = self._consecutive.get(key, 0) + 1 if key in found else 0
            self._consecutive[key] = count
            # An evidence alarm is already a sequential decision, and a fixed-window test is one test
            # per window: neither waits for consecutive crossings.
            once = key in found and (found[key][0].window == "evidence" or cfg.policy == "fixed_window")
            needed = 1 if once and kind != DriftKind.CONFIDENCE_SHIFT else cfg.consecutive
            active[key] = count >= needed
            last = self._last_event.get(key)
            if active[key] and (last is None or now - last >= cfg.cooldown_seconds):
                self._last_event[key] = now
                events.append(DriftEvent(model, segment, kind, kind in ACTIONABLE, count, found[key]))
        return active, events


def drift_targets(
    events: list[DriftEvent],
    segments: Mapping[str, AbstractSet[str]] | None = None,
    active: AbstractSet[tuple[str, str]] = frozenset(),
) -> list[tuple[str, str]]:
    """The series to recalibrate for this tick's drift events: one run per drifting series (the
    policy's cooldown keeps it to one per episode), only for calibration kinds (a label-free shift
    alone cannot be fitted).

    A model-wide drift gets the model-wide run, whose calibrator serves every segment without its
    own, unless only some of the model's ``segments`` (those evaluated) drift: raising an event
    now or still ``active`` (in drift on a calibration kind) from an earlier tick. Then the
    model-wide drift is their share of the traffic showing, and a model-wide fit would move the
    healthy segments too (``calmon demo`` showed one promoted that way, doubling their calibration
    error): only the segments with a new event are queued. When every segment drifts (or the
    model has one), the model-wide run alone; its segments are judged again against the fix."""
    drifting = {(e.model, e.segment) for e in events if e.kind in RECALIBRATE_ON}
    by_model: dict[str, set[str]] = {}
    for model, segment in drifting | set(active):
        if segment != MODEL_WIDE:
            by_model.setdefault(model, set()).add(segment)
    local = {
        model
        for model, drifted in by_model.items()
        if (model, MODEL_WIDE) in drifting and drifted < set((segments or {}).get(model, drifted))
    }

    def wanted(model: str, segment: str) -> bool:
        if segment == MODEL_WIDE:
            return model not in local
        return (model, MODEL_WIDE) not in drifting or model in local

    return sorted((m, s) for m, s in drifting if wanted(m, s))
