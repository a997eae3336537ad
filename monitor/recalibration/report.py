"""Decision reports: what was tried, the numbers, the gate's checks, the decision and why."""

from __future__ import annotations

from typing import Any

import numpy as np

from monitor.calibration import metrics
from monitor.calibration.selection import Candidate, GateDecision, Split

__all__ = [
    "build",
    "markdown",
    "reliability_rows",
    "svg",
]


def reliability_rows(scores: np.ndarray, correct: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    return metrics.reliability_table(scores, correct, n_bins).rows()


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
    return "\n".join(lines) + "\n"


def svg(report: dict[str, Any], size: int = 320) -> str:
    """The reliability diagram before (red) and after (blue) on the validation rows, as an SVG."""
    pad = 30
    scale = size - 2 * pad

    def point(confidence: float, accuracy: float) -> tuple[float, float]:
        return pad + confidence * scale, size - pad - accuracy * scale

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}">',
        f'<rect x="{pad}" y="{pad}" width="{scale}" height="{scale}" fill="white" stroke="#999"/>',
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" '
        'stroke="#bbb" stroke-dasharray="4"/>',
        f'<text x="{size / 2}" y="{size - 8}" font-size="11" text-anchor="middle">confidence</text>',
        f'<text x="10" y="{size / 2}" font-size="11" transform="rotate(-90 10 {size / 2})" '
        'text-anchor="middle">accuracy</text>',
    ]
    total = max(1, report["data"]["validation_rows"])
    for key, colour in (("reliability_before", "#d62728"), ("reliability_after", "#1f77b4")):
        points = [r for r in report.get(key, []) if r["count"] and r["accuracy"] is not None]
        path = " ".join("{:.1f},{:.1f}".format(*point(r["mean_confidence"], r["accuracy"])) for r in points)
        if path:
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for r in points:
            x, y = point(r["mean_confidence"], r["accuracy"])
            radius = 2 + 8 * (r["count"] / total) ** 0.5
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="{colour}" fill-opacity="0.6"/>'
            )
    parts.append(f'<text x="{pad + 4}" y="{pad + 14}" font-size="11" fill="#d62728">before</text>')
    parts.append(f'<text x="{pad + 4}" y="{pad + 28}" font-size="11" fill="#1f77b4">after</text>')
    parts.append("</svg>")
    return "\n".join(parts)
