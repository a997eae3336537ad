"""One recalibration run: recent labelled rows -> time split -> candidates -> gate -> decision.

Every run that gets as far as fitting writes a calibrator version (``active`` when promoted,
``rejected`` otherwise), its decision report and its events in one transaction; a run that cannot
fit (too few labels, an error) writes a ``recalibration_failed`` event. Triggers — drift, the cron
schedule, ``calmon recalibrate`` and ``POST /v1/models/{model}/recalibrate`` — all come here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, insert, select

from monitor.calibration.calibrators import Calibrator, IdentityCalibrator
from monitor.calibration.selection import (
    Candidate,
    GateDecision,
    fit_candidates,
    select_best,
    time_split,
    validation_gate,
)
from monitor.config import Settings
from monitor.recalibration import report as reports
from monitor.store import calibrators as registry
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event
from monitor.store.schema import calibrator_reports, predictions

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


def _rows(engine: Engine, model: str, segment: str, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    query = (
        select(predictions.c.raw_confidence, predictions.c.correct, predictions.c.ts)
        .where(predictions.c.model == model, predictions.c.correct.is_not(None))
        .order_by(predictions.c.ts.desc())
        .limit(limit)
    )
    if segment != MODEL_WIDE:
        query = query.where(predictions.c.segment == segment)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        rows = conn.execute(query).all()
        conn.rollback()
    p = np.array([r[0] for r in rows], dtype=np.float64)
    y = np.array([bool(r[1]) for r in rows], dtype=np.float64)
    ts = np.array([r[2] for r in rows], dtype=np.float64)
    return p, y, ts


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
    p, y, ts = _rows(engine, model, segment, cfg.max_rows)
    if p.size < cfg.min_rows and segment != MODEL_WIDE:
        fallback_from, segment = segment, MODEL_WIDE
        p, y, ts = _rows(engine, model, segment, cfg.max_rows)
    if p.size < cfg.min_rows:
        raise ValueError(f"{p.size} labelled predictions, fewer than recalibration.min_rows = {cfg.min_rows}")
    split = time_split(p, y, ts, cfg.validation_fraction)
    fit_window = (float(ts.min()), float(np.quantile(ts, 1.0 - cfg.validation_fraction)))
    candidates: list[Candidate] = fit_candidates(list(cfg.methods), split, settings.evaluation.ece_bins)
    chosen = select_best(candidates)
    active_label, active = _serving(engine, model, segment)
    assert chosen.calibrator is not None
    decision: GateDecision = validation_gate(
        active,
        chosen.calibrator,
        split.val_confidence,
        split.val_correct,
        ece_margin=cfg.ece_margin,
        brier_tolerance=cfg.brier_tolerance,
        auroc_tolerance=cfg.auroc_tolerance,
        n_boot=cfg.bootstrap_draws,
        n_bins=settings.evaluation.ece_bins,
        seed=0,
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
        active=active,
        decision=decision,
        outcome="dry_run" if dry_run else outcome,
        reason=reason,
        fallback_from=fallback_from,
        n_bins=settings.evaluation.ece_bins,
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
            conn, "recalibration_started", now, {"trigger": trigger, "rows": int(p.size)}, model, segment
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
