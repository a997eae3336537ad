"""Decision reports: what was tried, the numbers, the gate's checks, the decision and why."""

from __future__ import annotations

from typing import Any

import numpy as np

import monitor.charts as charts
from monitor.calibration import metrics
from monitor.calibration.advice import ThresholdAdvice, advise
from monitor.calibration.selection import Candidate, GateDecision, Split
from monitor.calibration.sketch import DEFAULT_FINE_BINS, CalibrationSketch

__all__ = [
    "build",
    "markdown",
    "reliability_rows",
    "svg",
    "threshold_advice",
    "threshold_moves",
]


def reliability_rows(scores: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    return metrics.reliability_table(scores, correct, n_bins).rows()


def _advice_dict(advice: ThresholdAdvice) -> dict[str, Any]:
    return {
        "threshold": advice.threshold,
        "coverage": advice.coverage,
        "precision": advice.precision,
        "precision_lower": advice.precision_lower,
        "labelled": advice.labelled,
    }


def threshold_advice(
    before: np.ndarray,
    after: np.ndarray,
    correct: np.ndarray,
    targets: tuple[float, ...] | list[float],
    alpha: float,
    fine_bins: int = DEFAULT_FINE_BINS,
) -> dict[str, Any]:
    """The accept/review threshold per target on the validation rows, scored by the serving
    calibrator (before) and by the candidate (after): a threshold is a point on one calibrator's
    scale, so it moves when the calibrator changes."""
    sketches = {
        name: CalibrationSketch(fine_bins).add(scores, correct)
        for name, scores in (("before", before), ("after", after))
    }
    return {
        "alpha": alpha,
        "rows": int(correct.size),
        "targets": [
            {"target": t, **{name: _advice_dict(advise(s, t, alpha)) for name, s in sketches.items()}}
            for t in targets
        ],
    }


def _threshold_text(advice: dict[str, Any]) -> str:
    if advice["threshold"] is None:
        return "none reaches it"
    return f"{advice['threshold']:.4f} (accepts {advice['coverage']:.1%})"


def threshold_moves(report: dict[str, Any]) -> list[str]:
    """One sentence per target on how the advised threshold moves with this decision."""
    found = report.get("advice")
    if not found:
        return []
    promoted = report["outcome"] == "promoted"
    lines = []
    for row in found["targets"]:
        before, after = _threshold_text(row["before"]), _threshold_text(row["after"])
        verb = "moves" if promoted else "would have moved"
        head = f"Precision {row['target']:.0%}:"
        if row["before"]["threshold"] is None and row["after"]["threshold"] is None:
            lines.append(f"{head} no threshold reaches it on these rows, before or after.")
        elif row["before"]["threshold"] == row["after"]["threshold"]:
            lines.append(f"{head} the threshold stays at {before}.")
        else:
            lines.append(f"{head} the threshold {verb} from {before} to {after}.")
    return lines


def build(
    *,
    model: str,
    segment: str,
    trigger: str,
    now: float,
    fit_window: tuple[float, float],
    split: Split,
    candidates: list[Candidate],
    chosen: Candidate | None,
    active_label: str,
    decision: GateDecision | None,
    outcome: str,
    reason: str,
    fallback_from: str | None,
    n_bins: int,
    before_scores: np.ndarray | None = None,
    after_scores: np.ndarray | None = None,
    advice_targets: tuple[float, ...] | list[float] = (),
    advice_alpha: float = 0.05,
    fine_bins: int = DEFAULT_FINE_BINS,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "model": model,
        "segment": segment,
        "trigger": trigger,
        "created_at": now,
        "outcome": outcome,
        "reason": reason,
        "fallback_from_segment": fallback_from,
        "data": {
            "fit_start": fit_window[0],
            "fit_end": fit_window[1],
            "fit_rows": int(split.fit_confidence.size),
            "validation_rows": int(split.val_confidence.size),
            "split": "by prediction time: fit on the older rows, validate on the newest",
        },
        "active": active_label,
        "candidates": [c.as_dict() for c in candidates],
        "chosen": chosen.method if chosen else None,
        "gate": decision.as_dict() if decision else None,
    }
    if before_scores is not None and after_scores is not None:
        report["reliability_before"] = reliability_rows(before_scores, split.val_correct, n_bins)
        report["reliability_after"] = reliability_rows(after_scores, split.val_correct, n_bins)
        if advice_targets:
            report["advice"] = threshold_advice(
                before_scores, after_scores, split.val_correct, advice_targets, advice_alpha, fine_bins
            )
    return report


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    lines = [
        f"# Recalibration of {report['model']} / {report['segment']}: {report['outcome']}",
        "",
        f"**Decision:** {report['outcome']} — {report['reason']}",
        f"**Trigger:** {report['trigger']}. **Serving before:** {report['active']}.",
    ]
    if report["fallback_from_segment"]:
        lines.append(
            f"Segment {report['fallback_from_segment']!r} had too few labels; fitted model-wide instead."
        )
    lines += [
        "",
        "## Data",
        f"{data['fit_rows']} rows fitted, {data['validation_rows']} validated ({data['split']}).",
        "",
        "## Candidates (validation)",
        "| method | ECE | NLL | Brier | AUROC | rank | error |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["candidates"]:
        v = c["validation"] or {}
        lines.append(
            f"| {c['method']} | {_fmt(v.get('ece'))} | {_fmt(v.get('nll'))} | {_fmt(v.get('brier'))} | "
            f"{_fmt(v.get('auroc'))} | {_fmt(c['rank'])} | {c['error'] or ''} |"
        )
    gate = report["gate"]
    if gate:
        lines += ["", f"## Gate: {report['chosen']} against the serving calibrator", ""]
        lines += [
            f"- {'PASS' if c['passed'] else 'FAIL'} **{c['name']}**: {c['detail']}" for c in gate["checks"]
        ]
    if "reliability_after" in report:
        lines += [
            "",
            "## Reliability on the validation rows (before -> after)",
            "",
            "| bin | count | confidence before | accuracy | confidence after | accuracy after |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        after = {r["bin"]: r for r in report["reliability_after"]}
        for b in report["reliability_before"]:
            a = after.get(b["bin"], {})
            if b["count"] or a.get("count"):
                lines.append(
                    f"| {b['lower']:.2f}-{b['upper']:.2f} | {b['count']}/{a.get('count', 0)} | "
                    f"{_fmt(b['mean_confidence'])} | {_fmt(b['accuracy'])} | "
                    f"{_fmt(a.get('mean_confidence'))} | {_fmt(a.get('accuracy'))} |"
                )
    if report.get("advice"):
        found = report["advice"]
        lines += [
            "",
            f"## Accept/review thresholds on the {found['rows']} validation rows (before -> after)",
            "",
            "A threshold is a point on one calibrator's scale: it moves when the calibrator changes. "
            f"Each keeps the precision of accepted answers at the target with probability "
            f"{1 - found['alpha']:.0%}. Apps that route on a threshold take the new one from "
            f"`GET /v1/models/{report['model']}/advice` (or `POST /v1/calibrate?target=`), recomputed "
            "from served traffic at every evaluation.",
            "",
            "| target | threshold before | coverage before | threshold after | coverage after |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in found["targets"]:
            b, a = row["before"], row["after"]
            lines.append(
                f"| {row['target']} | {_fmt(b['threshold'])} | {_fmt(b['coverage'])} | "
                f"{_fmt(a['threshold'])} | {_fmt(a['coverage'])} |"
            )
        lines += ["", *threshold_moves(report)]
    return "\n".join(lines) + "\n"


def svg(report: dict[str, Any], chart_id: str = "report-reliability") -> str:
    """Reliability on the validation rows: before (the serving calibrator) and after (the candidate),
    with each bin's weight, Wilson intervals and tiny bins hollow (``monitor.charts``)."""
    gate = report.get("gate") or {}
    before = (gate.get("active") or {}).get("ece")
    after = (gate.get("candidate") or {}).get("ece")
    numbers = " · ".join(
        f"{name} {value:.3f}" for name, value in (("before", before), ("after", after)) if value is not None
    )
    rows = report["data"]["validation_rows"]
    where = "all segments" if report["segment"] == "*" else f"segment {report['segment']}"
    title = f"{report['model']}, {where}: {report['outcome']}\n{rows:,} validation rows"
    title += f", ECE {numbers}" if numbers else ""
    curves = [
        charts.Curve(name, label, report[key], colour)
        for name, label, key, colour in (
            ("before", f"before: {report['active']}", "reliability_before", charts.RAW_COLOUR),
            ("after", f"after: {report.get('chosen') or 'candidate'}", "reliability_after",
             charts.CALIBRATED_COLOUR),
        )
        if report.get(key)
    ]  # fmt: skip
    n_bins = len(report.get("reliability_before") or report.get("reliability_after") or []) or 15
    return charts.reliability(chart_id, title, curves, n_bins)
