"""Fit candidate calibrators on a time-ordered split, pick one, and gate its promotion.

The gate answers "is the candidate clearly better than what serves now?" on held-out, newest data:
promote only if the ECE improves by a margin *and* a paired bootstrap CI of that improvement lies
above zero, the Brier score does not worsen, and the ranking (AUROC of confidence vs correctness)
does not drop beyond a tolerance. Every check is reported with its numbers, pass or fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from monitor.calibration import metrics
from monitor.calibration.calibrators import Calibrator, make
from monitor.calibration.metrics import FloatArray

__all__ = [
    "Candidate",
    "Check",
    "Evaluation",
    "GateDecision",
    "Split",
    "evaluate",
    "fit_candidates",
    "select_best",
    "time_split",
    "time_split_indices",
    "validation_gate",
]


@dataclass(frozen=True)
class Split:
    fit_confidence: FloatArray
    fit_correct: FloatArray
    val_confidence: FloatArray
    val_correct: FloatArray


def time_split_indices(
    timestamps: ArrayLike, validation_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices to fit on (older) and to validate on (the newest ``validation_fraction``)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size < 4:
        raise ValueError(f"need at least 4 labelled predictions to split, got {ts.size}")
    order = np.argsort(ts, kind="stable")
    cut = min(max(round(ts.size * (1.0 - validation_fraction)), 2), ts.size - 2)
    return order[:cut], order[cut:]


def time_split(
    confidence: ArrayLike, correct: ArrayLike, timestamps: ArrayLike, validation_fraction: float = 0.3
) -> Split:
    """Fit on the older part, validate on the newest ``validation_fraction`` (by timestamp)."""
    p, y = metrics.validate(confidence, correct)
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.shape != p.shape:
        raise ValueError(f"timestamps have shape {ts.shape}, confidence {p.shape}")
    fit, val = time_split_indices(ts, validation_fraction)
    return Split(p[fit], y[fit], p[val], y[val])


@dataclass(frozen=True)
class Evaluation:
    ece: float
    nll: float
    brier: float
    auroc: float
    mce: float
    debiased_ce: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def evaluate(
    calibrator: Calibrator,
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    scores: ArrayLike | None = None,
) -> Evaluation:
    """Validation metrics of ``calibrator`` (or of precomputed calibrated ``scores`` of the same rows)."""
    p, y = metrics.validate(confidence, correct)
    q = calibrator.transform(p) if scores is None else metrics.validate(scores)[0]
    return Evaluation(
        ece=metrics.expected_calibration_error(q, y, n_bins),
        nll=metrics.negative_log_likelihood(q, y),
        brier=metrics.brier_score(q, y),
        auroc=metrics.auroc(q, y),
        mce=metrics.maximum_calibration_error(q, y, n_bins),
        debiased_ce=metrics.debiased_calibration_error(q, y, n_bins),
    )


@dataclass
class Candidate:
    method: str
    calibrator: Calibrator | None
    evaluation: Evaluation | None
    error: str | None = None
    rank: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.calibrator.params() if self.calibrator else None,
            "validation": self.evaluation.as_dict() if self.evaluation else None,
            "error": self.error,
            "rank": self.rank,
        }


def fit_candidates(methods: Sequence[str], split: Split, n_bins: int = 15) -> list[Candidate]:
    """Fit every method on the fit part and evaluate it on the validation part; failures are kept."""
    candidates = []
    for method in methods:
        try:
            calibrator = make(method).fit(split.fit_confidence, split.fit_correct)
            evaluation = evaluate(calibrator, split.val_confidence, split.val_correct, n_bins)
            candidates.append(Candidate(method, calibrator, evaluation))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            candidates.append(Candidate(method, None, None, error=f"{type(exc).__name__}: {exc}"))
    return candidates


def select_best(candidates: list[Candidate]) -> Candidate:
    """The candidate with the best mean rank of validation NLL and ECE (ties: lower NLL).

    NLL is a proper scoring rule (it rewards calibration and sharpness together); ECE is what the
    product promises. Ranking on both avoids a sharp but miscalibrated winner and a flat one.
    """
    fitted = [c for c in candidates if c.evaluation is not None]
    if not fitted:
        raise ValueError(
            "no candidate could be fitted: " + "; ".join(f"{c.method}: {c.error}" for c in candidates)
        )
    nll_rank = _ranks([c.evaluation.nll for c in fitted])  # type: ignore[union-attr]
    ece_rank = _ranks([c.evaluation.ece for c in fitted])  # type: ignore[union-attr]
    for candidate, a, b in zip(fitted, nll_rank, ece_rank, strict=True):
        candidate.rank = (a + b) / 2.0
    return min(fitted, key=lambda c: (c.rank, c.evaluation.nll))  # type: ignore[union-attr]


def _ranks(values: list[float]) -> list[float]:
    return [float(r) for r in rankdata(values)]


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    checks: list[Check]
    active: Evaluation
    candidate: Evaluation

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def summary(self) -> str:
        failed = [c.name for c in self.checks if not c.passed]
        if self.promote:
            return "promote: every check passed"
        return "reject: failed " + ", ".join(failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "summary": self.summary(),
            "checks": [c.__dict__ for c in self.checks],
            "active": self.active.as_dict(),
            "candidate": self.candidate.as_dict(),
        }


def validation_gate(
    active: Calibrator,
    candidate: Calibrator,
    confidence: ArrayLike,
    correct: ArrayLike,
    *,
    ece_margin: float = 0.005,
    brier_tolerance: float = 1e-4,
    auroc_tolerance: float = 0.005,
    level: float = 0.95,
    n_boot: int = 500,
    n_bins: int = 15,
    seed: int | np.random.Generator | None = 0,
    active_scores: ArrayLike | None = None,
    candidate_scores: ArrayLike | None = None,
) -> GateDecision:
    """Decide on held-out data whether ``candidate`` should replace ``active``.

    ``active_scores``/``candidate_scores``: the calibrated validation confidences when they do not
    follow from ``transform(confidence)`` alone (a temperature applied to stored logits).
    """
    p, y = metrics.validate(confidence, correct)
    q_active = active.transform(p) if active_scores is None else metrics.validate(active_scores)[0]
    q_candidate = (
        candidate.transform(p) if candidate_scores is None else metrics.validate(candidate_scores)[0]
    )
    a = evaluate(active, p, y, n_bins, scores=q_active)
    c = evaluate(candidate, p, y, n_bins, scores=q_candidate)
    low, high = _paired_ece_difference_ci(q_active, q_candidate, y, n_bins, level, n_boot, seed)
    improvement = a.ece - c.ece
    checks = [
        Check(
            "ece_improves",
            improvement >= ece_margin,
            f"ECE {a.ece:.4f} -> {c.ece:.4f} (improvement {improvement:+.4f}, margin {ece_margin})",
            {"active": a.ece, "candidate": c.ece, "improvement": improvement, "margin": ece_margin},
        ),
        Check(
            "ece_improvement_ci",
            low > 0.0,
            f"{level:.0%} bootstrap CI of the improvement [{low:+.4f}, {high:+.4f}] "
            + ("lies above 0" if low > 0.0 else "includes or lies below 0"),
            {"lower": low, "upper": high, "level": level},
        ),
        Check(
            "brier_not_worse",
            c.brier <= a.brier + brier_tolerance,
            f"Brier {a.brier:.4f} -> {c.brier:.4f} (tolerance {brier_tolerance})",
            {"active": a.brier, "candidate": c.brier, "tolerance": brier_tolerance},
        ),
    ]
    if np.isnan(a.auroc) or np.isnan(c.auroc):
        checks.append(Check("auroc_kept", True, "AUROC undefined: the validation labels hold one class", {}))
    else:
        drop = a.auroc - c.auroc
        checks.append(
            Check(
                "auroc_kept",
                drop <= auroc_tolerance,
                f"AUROC {a.auroc:.4f} -> {c.auroc:.4f} (drop {drop:+.4f}, tolerance {auroc_tolerance})",
                {"active": a.auroc, "candidate": c.auroc, "drop": drop, "tolerance": auroc_tolerance},
            )
        )
    return GateDecision(all(check.passed for check in checks), checks, a, c)


def _paired_ece_difference_ci(
    q_active: FloatArray,
    q_candidate: FloatArray,
    y: FloatArray,
    n_bins: int,
    level: float,
    n_boot: int,
    seed: int | np.random.Generator | None,
) -> tuple[float, float]:
    """Percentile CI of ECE(active) - ECE(candidate) over paired resamples of the validation rows."""
    rng = np.random.default_rng(seed)
    n = y.size
    ia = metrics.bin_index(q_active, n_bins)
    ic = metrics.bin_index(q_candidate, n_bins)
    diffs = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        yy = y[pick]
        gaps = np.stack(
            [
                metrics.binned_gap(ia[pick], q_active[pick], yy, n_bins),
                metrics.binned_gap(ic[pick], q_candidate[pick], yy, n_bins),
            ]
        )
        active, candidate = metrics.ece_from_gap(gaps, n)
        diffs[b] = active - candidate
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return float(low), float(high)
