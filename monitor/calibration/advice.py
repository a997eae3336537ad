"""Threshold advice for selective prediction: accept an answer when its calibrated confidence is at
least ``t``, send the rest to review. Which ``t`` keeps the precision of the accepted answers at a
target, with what coverage (share of traffic accepted)?

The decision is a multiple test over the fine bins' edges, done as *fixed-sequence testing* (the
"Learn then Test" framework, Angelopoulos, Bates, Candès, Jordan and Lei, 2021): thresholds are
tested from the highest *likely to pass* down (see ``advise``), each null
"precision above t is below the target" rejected by the exact binomial tail at level ``alpha``,
stopping at the first that is not rejected. The lowest
rejected threshold is advised. Because the order is fixed before looking, the family-wise error is
``alpha`` with no correction: with probability at least ``1 - alpha``, every threshold from the
advised one up has a precision of at least the target on traffic of the same distribution. Scanning
all thresholds and taking the lowest whose bound passes would not have that guarantee.

Resolution: thresholds sit on the fine bins' edges (``1 / fine_bins``: 0.0083 at 120 bins), so a
target of 0.99 can only choose between 0.9917 and 1.0; finer bins near 1 are a later refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binom

from monitor.calibration.sketch import CalibrationSketch, Moment

__all__ = ["RiskCoveragePoint", "ThresholdAdvice", "advise", "risk_coverage"]


@dataclass(frozen=True)
class RiskCoveragePoint:
    threshold: float  # accept when calibrated confidence >= threshold
    coverage: float  # share of all predictions (labelled or not) accepted
    labelled: int  # labelled predictions accepted
    precision: float | None  # correct among them
    precision_lower: float | None  # one-sided exact (Clopper-Pearson) lower bound at 1 - alpha


@dataclass(frozen=True)
class ThresholdAdvice:
    target: float
    threshold: float | None  # None: no threshold reaches the target with this evidence
    coverage: float  # 0 when no threshold is advised
    precision: float | None
    precision_lower: float | None
    labelled: int
    alpha: float

    def action(self, confidence: float) -> str:
        """What to do with an answer: "accept" at or above the threshold, "review" below it."""
        return "accept" if self.threshold is not None and confidence >= self.threshold else "review"


def risk_coverage(sketch: CalibrationSketch, alpha: float = 0.05) -> list[RiskCoveragePoint]:
    """Coverage and precision of accepting at each fine-bin edge, from the highest threshold down."""
    m = sketch.moments
    n_all = float(m[Moment.N].sum())
    accepted = np.cumsum(m[Moment.N][::-1])[::-1]  # predictions at or above each bin's lower edge
    labelled = np.cumsum(m[Moment.N_L][::-1])[::-1]
    correct = np.cumsum(m[Moment.SY][::-1])[::-1]
    points = []
    for k in range(sketch.fine_bins - 1, -1, -1):
        n, right = round(float(labelled[k])), round(float(correct[k]))
        lower = float(beta.ppf(alpha, right, n - right + 1)) if right > 0 else 0.0
        points.append(
            RiskCoveragePoint(
                threshold=k / sketch.fine_bins,
                coverage=float(accepted[k]) / n_all if n_all else 0.0,
                labelled=n,
                precision=right / n if n else None,
                precision_lower=lower if n else None,
            )
        )
    return points


def _power(n: int, expected: float, target: float, alpha: float) -> float:
    """Chance the test passes at ``n`` accepted labels if precision is what the confidences say."""
    if n == 0 or expected <= target:
        return 0.0
    needed = int(binom.isf(alpha, n, target)) + 1  # the fewest correct answers that pass
    while needed > 0 and binom.sf(needed - 2, n, target) <= alpha:
        needed -= 1
    return float(binom.sf(needed - 1, n, expected))


def advise(sketch: CalibrationSketch, target: float, alpha: float = 0.05) -> ThresholdAdvice:
    """The lowest threshold reached by fixed-sequence testing (see the module docstring).

    The sequence starts where the test is most likely to pass if the accepted answers are as right
    as their calibrated confidences say (the most "power"), and goes down from there. Where it starts
    depends on confidences and counts only, never on whether the answers were right, so the order is
    fixed before the outcomes are looked at and the guarantee holds; starting at the very top, where
    a handful of answers cannot pass any test, would stop the sequence at once.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target precision must lie in (0, 1), got {target}")
    points = risk_coverage(sketch, alpha)
    expected_sums = np.cumsum(sketch.moments[Moment.S1][::-1])[::-1]
    powers = [
        _power(
            p.labelled,
            float(expected_sums[round(p.threshold * sketch.fine_bins)]) / p.labelled,
            target,
            alpha,
        )
        if p.labelled
        else 0.0
        for p in points
    ]
    start = int(np.argmax(powers))  # the first (highest threshold) of the most powerful
    advised: RiskCoveragePoint | None = None
    if powers[start] > 0:
        for point in points[start:]:
            right = round((point.precision or 0.0) * point.labelled)
            if float(binom.sf(right - 1, point.labelled, target)) > alpha:
                break
            advised = point
    if advised is None:
        return ThresholdAdvice(target, None, 0.0, None, None, 0, alpha)
    return ThresholdAdvice(
        target,
        advised.threshold,
        advised.coverage,
        advised.precision,
        advised.precision_lower,
        advised.labelled,
        alpha,
    )
