"""The status page's judgements and sentences: attention levels, evidence and decisions in words."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.calibration.calibrators import IdentityCalibrator, PlattScaling
from monitor.calibration.selection import validation_gate
from monitor.evaluation.windows import WindowStats
from monitor.web import words
from monitor.web.views import ALARM, NO_LABELS, OK, WATCH, judge


def evidence(score: str, log10: float | None, alarm: bool = False, segment: str = "*") -> dict[str, Any]:
    return {"model": "m", "segment": segment, "score": score, "log10_evidence": log10,
            "log10_threshold": 5.0, "alarm": alarm, "labels": 100, "epoch": 0.0}  # fmt: skip


LABELLED = [WindowStats("m", "*", "1h", "calibrated", 100, 50, 50, 0.5)]


@pytest.mark.parametrize(
    ("found", "drift", "state", "reason"),
    [
        (
            [evidence("calibrated", 6.0, alarm=True)],
            [],
            ALARM,
            "served confidence miscalibrated (model-wide)",
        ),
        (
            [evidence("paired", 6.0, alarm=True, segment="b")],
            [],
            ALARM,
            "worse than the raw scores (segment b)",
        ),
        ([], [{"segment": "*", "kind": "calibration", "active": True}], ALARM, "served confidence"),
        ([evidence("raw", 9.0, alarm=True)], [], OK, None),  # raw evidence alone: the drift flag says it
        ([], [{"segment": "a", "kind": "raw_calibration", "active": True}], WATCH, "calibrator compensates"),
        ([], [{"segment": "*", "kind": "confidence_shift", "active": True}], WATCH, "distribution shifted"),
        ([evidence("calibrated", 2.6)], [], WATCH, "52% of the way"),
        ([evidence("calibrated", 2.4)], [], OK, None),
        ([], [{"segment": "*", "kind": "calibration", "active": False}], OK, None),
    ],
)
def test_attention(
    found: list[dict[str, Any]], drift: list[dict[str, Any]], state: str, reason: str | None
) -> None:
    got, reasons = judge(LABELLED, found, drift)
    assert got == state
    assert (reason is None and not reasons) or any(reason in r for r in reasons), reasons


def test_without_labels_the_state_says_so() -> None:
    unlabelled = [WindowStats("m", "*", "1h", "calibrated", 100, 0, 100, 0.0)]
    assert judge(unlabelled, [], []) == (NO_LABELS, ["no labelled predictions in any window yet"])


def test_evidence_in_numbers_a_person_reads() -> None:
    assert [words.power(x) for x in (-0.2, 0.0, 1.61, 4.0, 7.23)] == ["0.63", "1", "41", "10,000", "10^7.2"]
    assert words.evidence_text(evidence("calibrated", 1.61)) == "evidence 41, alarm at 100,000"
    restarted = {**evidence("calibrated", None), "labels": 0, "epoch": 1.8e9}
    assert words.evidence_text(restarted) == "no labels bet on since the promotion; alarm at 100,000"


def test_event_summaries() -> None:
    drift = {"kind": "drift_detected", "payload": {"kind": "raw_calibration", "crossings": [
        {"window": "evidence", "value": 7.5, "threshold": 5.0}]}}  # fmt: skip
    assert words.event_summary(drift) == "raw calibration drift: evidence 10^7.5, past the alarm at 100,000"
    window = {"kind": "drift_detected", "payload": {"kind": "calibration", "crossings": [
        {"window": "24h", "value": 0.081, "threshold": 0.05}]}}  # fmt: skip
    assert words.event_summary(window) == "calibration drift: 24h window 0.081 over 0.05"
    rollback = {
        "kind": "calibrator_rolled_back",
        "payload": {"rolled_back": {"version": "3"}, "restored": None},
    }
    assert words.event_summary(rollback) == "v3 retired, back to identity"


def test_every_gate_check_has_words_for_both_outcomes() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 2000)
    y = rng.random(2000) < p - 0.15
    decision = validation_gate(IdentityCalibrator(), PlattScaling().fit(p, y), p, y, n_boot=50)
    for check in decision.as_dict()["checks"]:
        for passed in (True, False):
            headline, meaning = words.check_meaning({**check, "passed": passed})
            assert headline != check["name"] and meaning, check["name"]
    assert set(words.CHECKS) == {c.name for c in decision.checks}


def test_report_advice_names_the_next_step() -> None:
    report = {"model": "m", "segment": "*", "outcome": "promoted", "chosen": "platt", "active": "identity",
              "reason": "promote", "gate": {"checks": []}}  # fmt: skip
    assert "POST /v1/calibrators/7/rollback" in " ".join(words.report_advice(report, 7))
    checks = [{"name": "ece_improvement_ci", "passed": False}, {"name": "brier_not_worse", "passed": True}]
    rejected = {**report, "outcome": "rejected", "gate": {"checks": checks}}
    (first, _) = words.report_advice(rejected, 8)
    assert first == (
        "The serving calibrator (identity) stays: the candidate failed the check "
        "'the improvement is clear of noise'."
    )
