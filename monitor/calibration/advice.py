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

Resolution: thresholds sit on the sketch's bin edges: the uniform fine bins' (``1 / fine_bins``,
0.0083 at 120 bins) below 0.95 and the tail's above (ten per decade of ``1 - p``: 0.95, 0.960,
0.968, 0.975, 0.980, 0.984, 0.987, 0.990, 0.992, 0.994, 0.995, ... 0.99996; ``sketch`` module), so a
0.99 target can pick 0.990, 0.992, 0.994, ... rather than only 0.9917 or 1.0. Buckets folded before
the tail existed have none; a window holding any of them falls back to the uniform edges (until
``calmon rebuild-aggregates``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import bdtrc, betaincinv, ndtr, ndtri
from scipy.stats import beta

from monitor.calibration.sketch import CalibrationSketch, Moment, tail_edges, tail_start_bin

__all__ = ["RiskCoveragePoint", "ThresholdAdvice", "advise", "curve_points", "risk_coverage"]


class _Quantiles(dict[float, float]):
    """Upper normal quantiles by level, computed once each."""

    def __missing__(self, alpha: float) -> float:
        self[alpha] = value = float(-ndtri(alpha))
        return value


_Z = _Quantiles()


@dataclass(frozen=True)
class RiskCoveragePoint:
    threshold: float  # accept when calibrated confidence >= threshold (a bin edge)
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


def _columns(sketch: CalibrationSketch) -> tuple[np.ndarray, np.ndarray]:
    """The bins thresholds are chosen on (lower edges ascending, moments): the uniform bins below
    the tail and the tail's sub-bins when the tail holds exactly what the top uniform bins hold;
    all the uniform bins otherwise (buckets folded before the tail existed)."""
    uniform, tail = sketch.uniform, sketch.tail
    start = tail_start_bin(sketch.fine_bins)
    lower = np.arange(sketch.fine_bins) / sketch.fine_bins
    counts = (Moment.N, Moment.N_L)
    if np.array_equal(tail[counts, :].sum(axis=1), uniform[counts, start:].sum(axis=1)):
        edges = np.concatenate([lower[:start], tail_edges(sketch.fine_bins)])
        return edges, np.concatenate([uniform[:, :start], tail], axis=1)
    return lower, uniform


def _curve(sketch: CalibrationSketch) -> tuple[np.ndarray, ...]:
    """Per bin edge, highest first: threshold, coverage, accepted labels, correct, expected correct."""
    edges, m = _columns(sketch)
    n_all = float(m[Moment.N].sum())
    suffix = [
        np.cumsum(m[k][::-1]) for k in (Moment.N, Moment.N_L, Moment.SY, Moment.S1)
    ]  # highest edge first
    thresholds = edges[::-1]
    coverage = suffix[0] / n_all if n_all else np.zeros(edges.size)
    return thresholds, coverage, np.rint(suffix[1]), np.rint(suffix[2]), suffix[3]


def risk_coverage(sketch: CalibrationSketch, alpha: float = 0.05) -> list[RiskCoveragePoint]:
    """Coverage and precision of accepting at each bin edge, from the highest threshold down."""
    return _points(_curve(sketch), alpha, None)


def curve_points(
    sketch: CalibrationSketch, thresholds: Sequence[float], alpha: float = 0.05
) -> list[RiskCoveragePoint]:
    """The risk-coverage curve at the bin edges nearest ``thresholds`` (each edge once), highest first:
    a few points a snapshot can keep per series and Prometheus can carry as a bounded label."""
    curve = _curve(sketch)
    edges = curve[0]
    wanted = sorted({int(np.argmin(np.abs(edges - t))) for t in thresholds})
    return _points(curve, alpha, np.array(wanted, dtype=np.int64))


def _points(curve: tuple[np.ndarray, ...], alpha: float, pick: np.ndarray | None) -> list[RiskCoveragePoint]:
    thresholds, coverage, labelled, correct, _ = (a if pick is None else a[pick] for a in curve)
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(correct > 0, beta.ppf(alpha, correct, labelled - correct + 1), 0.0)
        precision = correct / labelled
    return [
        RiskCoveragePoint(
            threshold=float(thresholds[i]),
            coverage=float(coverage[i]),
            labelled=int(labelled[i]),
            precision=float(precision[i]) if labelled[i] else None,
            precision_lower=float(lower[i]) if labelled[i] else None,
        )
        for i in range(thresholds.size)
    ]


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
    thresholds, coverage, labelled, correct, expected_sum = _curve(sketch)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(labelled > 0, expected_sum / labelled, 0.0)
        # Predicted power, by the normal approximation: it only picks where the sequence starts,
        # from the confidences alone, so approximating costs power at worst, never the guarantee.
        needed = labelled * target + _Z[alpha] * np.sqrt(labelled * target * (1 - target))
        spread = np.sqrt(np.maximum(labelled * expected * (1 - expected), 1e-12))
        power = np.where(
            (labelled > 0) & (expected > target), ndtr((labelled * expected - needed) / spread), 0.0
        )
    n_int, k_int = labelled.astype(np.int64), correct.astype(np.int64)
    passes = (labelled > 0) & (bdtrc(k_int - 1, n_int, target) <= alpha)  # exact binomial tail
    start = int(np.argmax(power))  # the first (highest threshold) of the most powerful
    advised = None
    if power[start] > 0:
        failed = np.flatnonzero(~passes[start:])
        last = start + (failed[0] if failed.size else passes.size - start) - 1
        advised = last if last >= start else None
    if advised is None:
        return ThresholdAdvice(target, None, 0.0, None, None, 0, alpha)
    n, right = int(labelled[advised]), int(correct[advised])
    return ThresholdAdvice(
        target,
        float(thresholds[advised]),
        float(coverage[advised]),
        right / n,
        float(betaincinv(right, n - right + 1, alpha)) if right else 0.0,
        n,
        alpha,
    )
