"""Decisions in words a person can act on: what each gate check means, and what to do next."""

from __future__ import annotations

from typing import Any

__all__ = ["CHECKS", "check_meaning", "event_summary", "evidence_text", "power", "report_advice"]

# What passing or failing each gate check means for the person reading the report.
CHECKS: dict[str, tuple[str, str, str]] = {
    "ece_improves": (
        "Calibration error falls by at least the margin",
        "The candidate's confidences match how often answers were right, better than the serving "
        "calibrator's, by more than the margin.",
        "The candidate would not lower the calibration error by the margin, so changing calibrators "
        "is not worth it. If the served calibration is still poor, more labels or another method "
        "(recalibration.methods) may help.",
    ),
    "ece_improvement_ci": (
        "The improvement is clear of noise",
        "Resampling the validation rows, the improvement stays above zero (95% bootstrap interval).",
        "On this many validation rows the improvement could be chance: its 95% bootstrap interval "
        "reaches zero or below. More labelled rows settle it; the next scheduled or drift-triggered "
        "run tries again.",
    ),
    "brier_not_worse": (
        "Probability forecasts do not get worse (Brier score)",
        "The candidate's Brier score is no worse than the serving calibrator's.",
        "The candidate would make the probability forecasts worse overall even though it moves "
        "calibration error; it was not promoted.",
    ),
    "auroc_kept": (
        "Ranking of answers is kept (AUROC)",
        "The candidate keeps the order of answers from most to least likely right.",
        "The candidate would reorder answers (AUROC drops by more than the tolerance), so thresholds "
        "set on the old order would change meaning; it was not promoted.",
    ),
}


def check_meaning(check: dict[str, Any]) -> tuple[str, str]:
    """(headline, what it means) of one gate check as stored in a report."""
    headline, passed, failed = CHECKS.get(check["name"], (check["name"], "", ""))
    return headline, passed if check["passed"] else failed


def report_advice(report: dict[str, Any], calibrator_id: int) -> list[str]:
    """What the decision means and what to do about it, one sentence each."""
    where = "model-wide" if report["segment"] == "*" else f"for segment {report['segment']!r}"
    outcome = report["outcome"]
    if outcome == "promoted":
        return [
            f"{report['chosen']} (calibrator #{calibrator_id}) now serves {report['model']} {where}; "
            "calibrated confidences returned from now on use it.",
            "Nothing to do. If the served confidences get worse than the raw scores, calmon rolls it "
            "back by itself once the paired evidence says so; to roll back by hand, "
            f"POST /v1/calibrators/{calibrator_id}/rollback with an admin token.",
        ]
    if outcome == "rejected":
        failed = [CHECKS.get(c["name"], (c["name"],))[0].lower() for c in (report.get("gate") or {}).get(
            "checks", []) if not c["passed"]]  # fmt: skip
        because = f": the candidate failed the check{'s' if len(failed) > 1 else ''} " + "; ".join(
            f"'{name}'" for name in failed) if failed else ""  # fmt: skip
        return [
            f"The serving calibrator ({report['active']}) stays{because}.",
            "Calibrator #" + str(calibrator_id) + " is kept as a rejected version for the record. "
            "If the drift persists, the next run refits on newer labels.",
        ]
    if outcome == "dry_run":
        return ["A dry run: decided and reported, nothing was promoted."]
    return [f"The run did not finish: {report['reason']}"]


def event_summary(event: dict[str, Any]) -> str:
    """One line on what an event recorded."""
    payload = event.get("payload") or {}
    kind = event["kind"]
    if kind == "drift_detected":
        crossings = payload.get("crossings") or []
        first = crossings[0] if crossings else {}
        text = f"{str(payload.get('kind', '')).replace('_', ' ')} drift"
        if first.get("window") == "evidence":  # the detector's log10 e-value against its log10 threshold
            return f"{text}: evidence {power(first['value'])}, past the alarm at {power(first['threshold'])}"
        if first:
            value, threshold = first.get("value", 0), first.get("threshold", 0)
            text += f": {first.get('window')} window {value:.3g} over {threshold:.3g}"
        return text
    if kind in ("calibrator_promoted", "calibrator_rejected"):
        return f"{payload.get('method', '')} v{payload.get('version', '')}: {payload.get('reason', '')}"
    if kind == "calibrator_rolled_back":
        rolled = payload.get("rolled_back") or {}
        restored = payload.get("restored") or {}
        back_to = f"v{restored.get('version')}" if restored else "identity"
        return f"v{rolled.get('version', '?')} retired, back to {back_to}"
    if kind == "recalibration_started":
        return f"{payload.get('trigger', '')}, {payload.get('rows', 0)} rows"
    if kind == "recalibration_waiting":
        return str(payload.get("reason", "waiting for labels"))
    if kind == "recalibration_failed":
        return str(payload.get("error", ""))
    return ""


def power(log10: float) -> str:
    """An e-value given as its log10, written for a person: 0.63, 41, 12,000 or 10^7.2."""
    if log10 >= 6:
        return f"10^{log10:.1f}"
    value = 10**log10
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def evidence_text(entry: dict[str, Any]) -> str:
    """A detector's evidence against its alarm threshold, or why it has none yet."""
    threshold = power(entry["log10_threshold"])
    if entry.get("log10_evidence") is None or not entry.get("labels"):
        since = "the promotion" if entry.get("epoch") else "the start"
        return f"no labels bet on since {since}; alarm at {threshold}"
    return f"evidence {power(entry['log10_evidence'])}, alarm at {threshold}"
