"""The names every part of calmon shares, each defined once.

Series names (the model-wide and overflow segments), the two scores, event kinds, drift kinds,
recalibration outcomes, job outcomes and calibrator methods. They are contracts: they appear in
the database, the API, metric labels, alert rules and dashboards, so a rename here is a migration.
``StrEnum`` members compare and serialise as their plain string values.
"""

from __future__ import annotations

from enum import StrEnum

from monitor.calibration.calibrators import CALIBRATORS, IdentityCalibrator

__all__ = [
    "ACTIONABLE_DRIFT",
    "FITTABLE_METHODS",
    "IDENTITY",
    "MODEL_WIDE",
    "OTHER_SEGMENT",
    "RECALIBRATE_ON",
    "DriftKind",
    "EventKind",
    "FeedbackOutcome",
    "JobOutcome",
    "RecalibrationOutcome",
    "Score",
    "Trigger",
]

MODEL_WIDE = "*"  # the segment of a model's all-segments series, and of its model-wide calibrator
OTHER_SEGMENT = "other"  # where the segments beyond a model's cap are merged
IDENTITY = IdentityCalibrator.method  # what serves a series without an active calibrator
# What a recalibration may fit, in the calibrator registry's order (identity is never fitted).
FITTABLE_METHODS: tuple[str, ...] = tuple(m for m in CALIBRATORS if m != IDENTITY)


class Score(StrEnum):
    """Which confidence a statistic is about: as the model sent it, or as calmon served it."""

    RAW = "raw"
    CALIBRATED = "calibrated"


class EventKind(StrEnum):
    """Kinds of the append-only audit log (``events`` table, ``GET /v1/events``, notifications)."""

    DRIFT_DETECTED = "drift_detected"
    RECALIBRATION_STARTED = "recalibration_started"
    CALIBRATOR_PROMOTED = "calibrator_promoted"
    CALIBRATOR_REJECTED = "calibrator_rejected"
    RECALIBRATION_FAILED = "recalibration_failed"
    CALIBRATOR_ROLLED_BACK = "calibrator_rolled_back"
    RECALIBRATION_WAITING = "recalibration_waiting"  # drift found, too few labels since it began


class DriftKind(StrEnum):
    """What the drift policy judges (``calmon_drift_detected{kind}``)."""

    CALIBRATION = "calibration"
    CALIBRATION_TEST = "calibration_test"
    CONFIDENCE_SHIFT = "confidence_shift"
    RAW_CALIBRATION = "raw_calibration"  # reported and alerted, never acted on


ACTIONABLE_DRIFT = (DriftKind.CALIBRATION, DriftKind.CALIBRATION_TEST, DriftKind.CONFIDENCE_SHIFT)
RECALIBRATE_ON = (DriftKind.CALIBRATION, DriftKind.CALIBRATION_TEST)  # label-free shift cannot be fitted


class RecalibrationOutcome(StrEnum):
    """The end of a recalibration run (``calmon_recalibrations_total{outcome}``)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    WAITING = "waiting"  # too few labels since the change point: an event, no fit, never counted
    DRY_RUN = "dry_run"  # decided and reported, nothing written; never counted


class Trigger(StrEnum):
    """Why a recalibration ran."""

    DRIFT = "drift"
    SCHEDULE = "schedule"
    MANUAL = "manual"


class FeedbackOutcome(StrEnum):
    """What one feedback record did (``calmon_feedback_total{outcome}``)."""

    MATCHED = "matched"
    PENDING = "pending"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


class JobOutcome(StrEnum):
    """How one scheduler job run ended (``calmon_job_runs_total{outcome}``)."""

    SUCCESS = "success"
    FAILURE = "failure"
