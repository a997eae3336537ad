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
from sqlalchemy import Engine

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
from monitor.config import RecalibrationConfig, Settings
from monitor.recalibration import report as reports
from monitor.store import calibrators as registry
from monitor.store.engine import READ_ONLY
from monitor.store.events import append_event, latest_event
from monitor.store.queries import series_known
from monitor.store.reports import load_report as load_stored_report
from monitor.store.reports import save_report
from monitor.store.training import LabelledRows, labelled_rows
from monitor.vocabulary import IDENTITY, MODEL_WIDE, EventKind, RecalibrationOutcome, Trigger

__all__ = ["NotEnoughLabels", "Outcome", "UnknownSeries", "load_report", "recalibrate"]

log = logging.getLogger("calmon.recalibration")


@dataclass
class Outcome:
    outcome: RecalibrationOutcome
    model: str
    segment: str
    reason: str
    calibrator_id: int | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "model": self.model,
            "segment": self.segment,
            "reason": self.reason,
            "calibrator_id": self.calibrator_id,
            "report": self.report,
        }


class NotEnoughLabels(ValueError):
    """Too few labelled rows to fit: an expected outcome of a young or rarely labelled series."""


class WaitForLabels(NotEnoughLabels):
    """Drift began too recently: fewer than ``min_rows`` labels since the change point. Fitting on
    older rows would mix the two regimes, so the run waits (an event) and drift asks again later."""


class UnknownSeries(LookupError):
    """No prediction of this model (or segment) was ever stored: nothing to recalibrate, nothing to
    record. Raised before anything is written, so a typo never leaves an event or a counter."""


@dataclass
class _Fitted:
    """What a run decided, before anything is written."""

    model: str
    segment: str
    fallback_from: str | None
    data: LabelledRows
    split: Split
    fit_window: tuple[float, float]
    candidates: list[Candidate]
    chosen: Candidate
    active_label: str
    decision: GateDecision
    before: np.ndarray
    after: np.ndarray

    @property
    def promote(self) -> bool:
        return self.decision.promote

    @property
    def reason(self) -> str:
        return f"{self.chosen.method}: {self.decision.summary()}"


def _rows(engine: Engine, model: str, segment: str, limit: int, since: float | None) -> LabelledRows:
    with engine.connect().execution_options(**READ_ONLY) as conn:
        rows = labelled_rows(conn, model, segment, limit, since)
        conn.rollback()
    return rows


def _series_rows(
    engine: Engine, cfg: RecalibrationConfig, model: str, segment: str, since: float | None
) -> tuple[str, str | None, LabelledRows]:
    """The segment's rows, or the model-wide ones when the segment has too few (segment, fell back from).

    After a change point, a segment falls back only when it is small (fewer than ``min_rows`` ever):
    one that is merely short of *new* rows waits for them."""
    data = _rows(engine, model, segment, cfg.max_rows, since)
    fallback_from = None
    if data.size < cfg.min_rows and segment != MODEL_WIDE:
        if since is not None and _rows(engine, model, segment, cfg.min_rows, None).size >= cfg.min_rows:
            # A segment big enough to fit on its own, short of rows only since its change point:
            # its own rows will come. The model-wide fit would serve every healthy segment too (the
            # demo showed one promoted that way, doubling their calibration error).
            raise WaitForLabels(
                f"{data.size} labelled predictions of segment {segment!r} since the change point "
                f"{since:.0f}, fewer than recalibration.min_rows = {cfg.min_rows}: waiting for them "
                "rather than fitting the model-wide calibrator"
            )
        fallback_from, segment = segment, MODEL_WIDE
        data = _rows(engine, model, segment, cfg.max_rows, since)
    if data.size < cfg.min_rows and since is not None:
        raise WaitForLabels(
            f"{data.size} labelled predictions since the change point {since:.0f}, fewer than "
            f"recalibration.min_rows = {cfg.min_rows}: waiting rather than mixing regimes"
        )
    if data.size < cfg.min_rows:
        raise NotEnoughLabels(
            f"{data.size} labelled predictions, fewer than recalibration.min_rows = {cfg.min_rows}"
        )
    return segment, fallback_from, data


def _logit_temperature(data: LabelledRows, fit: np.ndarray, min_rows: int) -> TemperatureScaling | None:
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


def _candidates(
    cfg: RecalibrationConfig,
    data: LabelledRows,
    fit: np.ndarray,
    split: Split,
    n_bins: int,
    val_logits: list[Any],
) -> list[Candidate]:
    """Every configured method fitted on the older rows; temperature on full logits where stored."""
    candidates: list[Candidate] = fit_candidates(list(cfg.methods), split, n_bins)
    if "temperature" not in cfg.methods:
        return candidates
    on_logits = _logit_temperature(data, fit, cfg.min_logit_rows)
    if on_logits is None:
        return candidates
    scores = calibrate_rows(on_logits, split.val_confidence, val_logits)
    evaluation = evaluate(on_logits, split.val_confidence, split.val_correct, n_bins, scores=scores)
    return [
        Candidate("temperature", on_logits, evaluation) if c.method == "temperature" else c
        for c in candidates
    ]


def _serving(engine: Engine, model: str, segment: str) -> tuple[str, Calibrator]:
    """What ingest applies to this series now: its own, else the model-wide, else the identity."""
    with engine.connect().execution_options(**READ_ONLY) as conn:
        record = registry.active(conn, model, segment) or registry.active(conn, model, MODEL_WIDE)
        conn.rollback()
    if record is None:
        return IDENTITY, IdentityCalibrator()
    return f"{record.method} v{record.version} ({record.segment})", record.calibrator()


def _fit_and_gate(
    engine: Engine, settings: Settings, model: str, segment: str, since: float | None
) -> _Fitted:
    cfg = settings.recalibration
    n_bins = settings.evaluation.ece_bins
    segment, fallback_from, data = _series_rows(engine, cfg, model, segment, since)
    fit, val = time_split_indices(data.ts, cfg.validation_fraction)
    split = Split(data.p[fit], data.y[fit], data.p[val], data.y[val])
    val_logits = [data.logits[i] for i in val]
    candidates = _candidates(cfg, data, fit, split, n_bins, val_logits)
    chosen = select_best(candidates)
    assert chosen.calibrator is not None
    active_label, active = _serving(engine, model, segment)
    before = calibrate_rows(active, split.val_confidence, val_logits)
    after = calibrate_rows(chosen.calibrator, split.val_confidence, val_logits)
    decision = validation_gate(
        active,
        chosen.calibrator,
        split.val_confidence,
        split.val_correct,
        # Larger than noise (the CI) and at the scale of the drift tolerance: a calibrator within the
        # tolerance is not replaced for a sliver, and refits on healthy traffic are refused.
        ece_margin=max(cfg.ece_margin, settings.drift_for(model, segment).tolerance),
        brier_tolerance=cfg.brier_tolerance,
        auroc_tolerance=cfg.auroc_tolerance,
        n_boot=cfg.bootstrap_draws,
        n_bins=n_bins,
        seed=0,
        active_scores=before,
        candidate_scores=after,
    )
    fit_window = (float(data.ts[fit].min()), float(data.ts[fit].max()))
    return _Fitted(
        model,
        segment,
        fallback_from,
        data,
        split,
        fit_window,
        candidates,
        chosen,
        active_label,
        decision,
        before,
        after,
    )


def _report(fitted: _Fitted, trigger: str, now: float, outcome: str, settings: Settings) -> dict[str, Any]:
    return reports.build(
        model=fitted.model,
        segment=fitted.segment,
        trigger=trigger,
        now=now,
        fit_window=fitted.fit_window,
        split=fitted.split,
        candidates=fitted.candidates,
        chosen=fitted.chosen,
        active_label=fitted.active_label,
        decision=fitted.decision,
        outcome=outcome,
        reason=fitted.reason,
        fallback_from=fitted.fallback_from,
        n_bins=settings.evaluation.ece_bins,
        before_scores=fitted.before,
        after_scores=fitted.after,
        advice_targets=settings.advice_targets_for(fitted.model, fitted.segment),
        advice_alpha=settings.advice.alpha,
        fine_bins=settings.evaluation.fine_bins,
    )


def _write(engine: Engine, fitted: _Fitted, trigger: str, now: float, report: dict[str, Any]) -> int:
    """The version, its report and the run's events, in one transaction; the new calibrator's id."""
    assert fitted.chosen.calibrator is not None
    decision = fitted.decision
    with engine.begin() as conn:
        record = registry.create(
            conn,
            fitted.model,
            fitted.segment,
            fitted.chosen.calibrator,
            now,
            status="candidate" if fitted.promote else "rejected",
            reason=fitted.reason,
            metrics={"validation": decision.candidate.as_dict(), "serving": decision.active.as_dict()},
            fit_start=fitted.fit_window[0],
            fit_end=fitted.fit_window[1],
        )
        report["calibrator_id"] = record.id
        report["version"] = str(record.version)
        save_report(conn, record.id, now, report, reports.markdown(report))
        started = {"trigger": trigger, "rows": fitted.data.size}
        append_event(conn, EventKind.RECALIBRATION_STARTED, now, started, fitted.model, fitted.segment)
        details = {"trigger": trigger, "checks": [c.__dict__ for c in decision.checks]}
        if fitted.promote:
            registry.activate(conn, record.id, now, fitted.reason, details)
        else:
            payload = {**details, "version": str(record.version), "method": fitted.chosen.method}
            payload["reason"] = fitted.reason
            append_event(
                conn, EventKind.CALIBRATOR_REJECTED, now, payload, fitted.model, fitted.segment, record.id
            )
    return record.id


def _run(
    engine: Engine,
    settings: Settings,
    model: str,
    segment: str,
    trigger: str,
    dry_run: bool,
    now: float,
    since: float | None,
) -> Outcome:
    fitted = _fit_and_gate(engine, settings, model, segment, since)
    outcome = RecalibrationOutcome.PROMOTED if fitted.promote else RecalibrationOutcome.REJECTED
    if dry_run:
        report = _report(fitted, trigger, now, RecalibrationOutcome.DRY_RUN, settings)
        report["data"]["since"] = since
        return Outcome(
            RecalibrationOutcome.DRY_RUN, fitted.model, fitted.segment, fitted.reason, None, report
        )
    report = _report(fitted, trigger, now, outcome, settings)
    report["data"]["since"] = since  # a drift's change point: only rows predicted after it
    calibrator_id = _write(engine, fitted, trigger, now, report)
    log.info("recalibration finished", extra={"model": model, "segment": segment, "outcome": str(outcome)})
    return Outcome(outcome, fitted.model, fitted.segment, fitted.reason, calibrator_id, report)


def recalibrate(
    engine: Engine,
    settings: Settings,
    model: str,
    segment: str = MODEL_WIDE,
    trigger: str = Trigger.MANUAL,
    dry_run: bool = False,
    now: float | None = None,
    since: float | None = None,
) -> Outcome:
    """Fit, gate and promote or refuse, writing the decision; a failure is an outcome, never a raise,
    except for a series that does not exist (``UnknownSeries``: nothing is written).

    ``since``: fit and validate only on rows predicted at or after it (a drift's change point)."""
    now = time.time() if now is None else now
    with engine.connect().execution_options(**READ_ONLY) as conn:
        known = series_known(conn, model, None if segment == MODEL_WIDE else segment)
        conn.rollback()
    if not known:
        what = f"model {model!r}" if segment == MODEL_WIDE else f"segment {segment!r} of model {model!r}"
        raise UnknownSeries(f"no predictions stored for {what}")
    try:
        return _run(engine, settings, model, segment, trigger, dry_run, now, since)
    except WaitForLabels as exc:
        log.info(
            "recalibration waits for labels", extra={"model": model, "segment": segment, "error": str(exc)}
        )
        if not dry_run:
            payload = {"trigger": trigger, "since": since, "min_rows": settings.recalibration.min_rows,
                       "reason": str(exc)}  # fmt: skip
            with engine.begin() as conn:
                last = latest_event(conn, model, segment)
                said = last is not None and last["kind"] == EventKind.RECALIBRATION_WAITING
                if not (said and last is not None and last["payload"].get("since") == since):
                    append_event(conn, EventKind.RECALIBRATION_WAITING, now, payload, model, segment)
        return Outcome(RecalibrationOutcome.WAITING, model, segment, str(exc))
    except Exception as exc:  # a failed run is an event and a counter, never a crash
        if isinstance(exc, NotEnoughLabels):
            log.info(
                "recalibration not possible yet",
                extra={"model": model, "segment": segment, "error": str(exc)},
            )
        else:
            log.exception("recalibration failed", extra={"model": model, "segment": segment})
        outcome = Outcome(RecalibrationOutcome.FAILED, model, segment, f"{type(exc).__name__}: {exc}")
        if not dry_run:
            payload = {
                "trigger": trigger,
                "error": outcome.reason,
                "max_rows": settings.recalibration.max_rows,
            }
            with engine.begin() as conn:
                append_event(conn, EventKind.RECALIBRATION_FAILED, now, payload, model, segment)
        return outcome


def load_report(engine: Engine, calibrator_id: int) -> tuple[dict[str, Any], str] | None:
    with engine.connect().execution_options(**READ_ONLY) as conn:
        found = load_stored_report(conn, calibrator_id)
        conn.rollback()
    return found
