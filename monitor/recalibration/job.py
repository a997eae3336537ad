"""One recalibration run: recent labelled rows -> time split -> candidates -> gate -> decision.

Every run that gets as far as fitting writes a calibrator version (``active`` when promoted,
``rejected`` otherwise), its decision report and its events in one transaction; a run that cannot
fit (too few labels, an error) writes a ``recalibration_failed`` event. Triggers — drift, the cron
schedule, ``calmon recalibrate`` and ``POST /v1/models/{model}/recalibrate`` — all come here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, insert, select

from monitor.calibration.calibrators import Calibrator, IdentityCalibrator, TemperatureScaling, calibrate_rows
from monitor.calibration.selection import (
    Candidate,
    GateDecision,
    Split,
    evaluate,
    fit_candidates,
    select_best,
    time_split_indices,
    validation_gate,
)
from monitor.config import Settings
from monitor.recalibration import report as reports
from monitor.store import calibrators as registry
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event
from monitor.store.schema import calibrator_reports, predictions
from monitor.store.vectors import logits_of

log = logging.getLogger("calmon.recalibration")
MODEL_WIDE = "*"


@dataclass
class Outcome:
    outcome: str  # promoted | rejected | failed | dry_run
    model: str
    segment: str
    reason: str
    calibrator_id: int | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "model": self.model,
            "segment": self.segment,
            "reason": self.reason,
            "calibrator_id": self.calibrator_id,
            "report": self.report,
        }


@dataclass
class _Rows:
    """Recent labelled rows of one series, newest first."""

    p: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    logits: list[np.ndarray | None]  # per row: class logits when stored (probs as log-probs)
    labels: list[int | None]  # per row: the true class index when the label feedback names one


def _class_index(label: str | None, classes: int) -> int | None:
    if label is None or not label.isdigit():
        return None
    index = int(label)
    return index if index < classes else None


def _rows(engine: Engine, model: str, segment: str, limit: int) -> _Rows:
    query = (
        select(
            predictions.c.raw_confidence,
            predictions.c.correct,
            predictions.c.ts,
            predictions.c.input_kind,
            predictions.c.vector,
            predictions.c.label,
        )
        .where(predictions.c.model == model, predictions.c.correct.is_not(None))
        .order_by(predictions.c.ts.desc())
        .limit(limit)
    )
    if segment != MODEL_WIDE:
        query = query.where(predictions.c.segment == segment)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        rows = conn.execute(query).all()
        conn.rollback()
    logits = [logits_of(r.input_kind, r.vector) for r in rows]
    return _Rows(
        p=np.array([r[0] for r in rows], dtype=np.float64),
        y=np.array([bool(r[1]) for r in rows], dtype=np.float64),
        ts=np.array([r[2] for r in rows], dtype=np.float64),
        logits=logits,
        labels=[
            _class_index(r.label, z.size) if z is not None else None
            for r, z in zip(rows, logits, strict=True)
        ],
    )


def _logit_temperature(data: _Rows, fit: np.ndarray, min_rows: int) -> TemperatureScaling | None:
    """Temperature fitted on full logits, when enough fit rows carry logits and a class label."""
    usable = [i for i in fit if data.logits[i] is not None and data.labels[i] is not None]
    if not usable:
        return None
    classes = Counter(data.logits[i].size for i in usable).most_common(1)[0][0]
    usable = [i for i in usable if data.logits[i].size == classes]
    if len(usable) < min_rows:
        return None
    matrix = np.stack([data.logits[i] for i in usable])
    return TemperatureScaling().fit_logits(matrix, np.array([data.labels[i] for i in usable]))


def _serving(engine: Engine, model: str, segment: str) -> tuple[str, Calibrator]:
    """What ingest applies to this series now: its own, else the model-wide, else the identity."""
    with engine.connect().execution_options(**READ_ONLY) as conn:
        record = registry.active(conn, model, segment) or registry.active(conn, model, MODEL_WIDE)
        conn.rollback()
    if record is None:
        return "identity", IdentityCalibrator()
    return f"{record.method} v{record.version} ({record.segment})", record.calibrator()


def recalibrate(
    engine: Engine,
    settings: Settings,
    model: str,
    segment: str = MODEL_WIDE,
    trigger: str = "manual",
    dry_run: bool = False,
    now: float | None = None,
) -> Outcome:
    now = time.time() if now is None else now
    cfg = settings.recalibration
    try:
        return _run(engine, settings, model, segment, trigger, dry_run, now)
    except Exception as exc:  # a failed run is an event and a counter, never a crash
        log.exception("recalibration failed", extra={"model": model, "segment": segment})
        outcome = Outcome("failed", model, segment, f"{type(exc).__name__}: {exc}")
        if not dry_run:
            with engine.begin() as conn:
                append_event(
                    conn,
                    "recalibration_failed",
                    now,
                    {"trigger": trigger, "error": outcome.reason, "max_rows": cfg.max_rows},
                    model,
                    segment,
                )
        return outcome


def _run(
    engine: Engine, settings: Settings, model: str, segment: str, trigger: str, dry_run: bool, now: float
) -> Outcome:
    cfg = settings.recalibration
    fallback_from = None
    data = _rows(engine, model, segment, cfg.max_rows)
    if data.p.size < cfg.min_rows and segment != MODEL_WIDE:
        fallback_from, segment = segment, MODEL_WIDE
        data = _rows(engine, model, segment, cfg.max_rows)
    if data.p.size < cfg.min_rows:
        raise ValueError(
            f"{data.p.size} labelled predictions, fewer than recalibration.min_rows = {cfg.min_rows}"
        )
    fit, val = time_split_indices(data.ts, cfg.validation_fraction)
    split = Split(data.p[fit], data.y[fit], data.p[val], data.y[val])
    val_logits = [data.logits[i] for i in val]
    fit_window = (float(data.ts[fit].min()), float(data.ts[fit].max()))
    n_bins = settings.evaluation.ece_bins
    candidates: list[Candidate] = fit_candidates(list(cfg.methods), split, n_bins)
    if "temperature" in cfg.methods:
        # Temperature on full logits where stored (and labelled with a class), else on confidences.
        on_logits = _logit_temperature(data, fit, cfg.min_logit_rows)
        if on_logits is not None:
            scores = calibrate_rows(on_logits, split.val_confidence, val_logits)
            evaluation = evaluate(on_logits, split.val_confidence, split.val_correct, n_bins, scores=scores)
            candidates = [
                Candidate("temperature", on_logits, evaluation) if c.method == "temperature" else c
                for c in candidates
            ]
    chosen = select_best(candidates)
    active_label, active = _serving(engine, model, segment)
    assert chosen.calibrator is not None
    before = calibrate_rows(active, split.val_confidence, val_logits)
    after = calibrate_rows(chosen.calibrator, split.val_confidence, val_logits)
    decision: GateDecision = validation_gate(
        active,
        chosen.calibrator,
        split.val_confidence,
        split.val_correct,
        ece_margin=cfg.ece_margin,
        brier_tolerance=cfg.brier_tolerance,
        auroc_tolerance=cfg.auroc_tolerance,
        n_boot=cfg.bootstrap_draws,
        n_bins=n_bins,
        seed=0,
        active_scores=before,
        candidate_scores=after,
    )
    outcome = "promoted" if decision.promote else "rejected"
    reason = f"{chosen.method}: {decision.summary()}"
    report = reports.build(
        model=model,
        segment=segment,
        trigger=trigger,
        now=now,
        fit_window=fit_window,
        split=split,
        candidates=candidates,
        chosen=chosen,
        active_label=active_label,
        decision=decision,
        outcome="dry_run" if dry_run else outcome,
        reason=reason,
        fallback_from=fallback_from,
        n_bins=n_bins,
        before_scores=before,
        after_scores=after,
    )
    if dry_run:
        return Outcome("dry_run", model, segment, reason, None, report)
    with engine.begin() as conn:
        record = registry.create(
            conn,
            model,
            segment,
            chosen.calibrator,
            now,
            status="candidate" if decision.promote else "rejected",
            reason=reason,
            metrics={"validation": decision.candidate.as_dict(), "serving": decision.active.as_dict()},
            fit_start=fit_window[0],
            fit_end=fit_window[1],
        )
        if decision.promote:
            registry.activate(conn, record.id, now, reason)
        report["calibrator_id"] = record.id
        report["version"] = str(record.version)
        conn.execute(
            insert(calibrator_reports).values(
                calibrator_id=record.id,
                created_at=now,
                body_json=orjson.dumps(report).decode(),
                body_markdown=reports.markdown(report),
            )
        )
        append_event(
            conn, "recalibration_started", now, {"trigger": trigger, "rows": int(data.p.size)}, model, segment
        )
        append_event(
            conn,
            "calibrator_promoted" if decision.promote else "calibrator_rejected",
            now,
            {
                "trigger": trigger,
                "version": str(record.version),
                "method": chosen.method,
                "reason": reason,
                "checks": [c.__dict__ for c in decision.checks],
            },
            model,
            segment,
            record.id,
        )
    log.info("recalibration finished", extra={"model": model, "segment": segment, "outcome": outcome})
    return Outcome(outcome, model, segment, reason, record.id, report)


def load_report(engine: Engine, calibrator_id: int) -> tuple[dict[str, Any], str] | None:
    with engine.connect().execution_options(**READ_ONLY) as conn:
        row = conn.execute(
            select(calibrator_reports).where(calibrator_reports.c.calibrator_id == calibrator_id)
        ).first()
        conn.rollback()
    return (orjson.loads(row.body_json), row.body_markdown) if row is not None else None
