"""The e-detector: valid under the null (supermartingale, false-alarm bound), order-independent,
mergeable, fast after a shift, and placing the change point where the shift began."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.calibration import metrics
from monitor.calibration.evidence import (
    BetGrid,
    Detector,
    LabelSums,
    label_sums,
    log_increments,
    paired_log_increments,
    sign_patterns,
)
from monitor.calibration.sketch import CalibrationSketch

BINS = 15
TOLERANCE = 0.02
GRID = BetGrid.for_bins(BINS)


def sums_of(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> LabelSums:
    """Independent computation: bin each label, then sum (p - y) and its square per bin."""
    index = metrics.bin_index(p, bins)
    diff = p - y
    return LabelSums(
        np.bincount(index, minlength=bins).astype(float),
        np.bincount(index, weights=diff, minlength=bins),
        np.bincount(index, weights=diff**2, minlength=bins),
    )


def at_tolerance(rng: np.random.Generator, n: int, shape: str = "over") -> tuple[np.ndarray, np.ndarray]:
    """Labels whose population calibration error is exactly the tolerance (the null's boundary)."""
    p = rng.uniform(0.55, 0.95, n)
    if shape == "over":
        q = p - TOLERANCE
    elif shape == "under":
        q = p + TOLERANCE
    else:  # over above 0.75, under below: still |bias| = τ in every bin
        q = np.where(p > 0.75, p - TOLERANCE, p + TOLERANCE)
    return p, (rng.random(n) < q).astype(float)


def test_weights_are_a_probability_and_patterns_bounded() -> None:
    assert np.exp(GRID.log_weights).sum() == pytest.approx(1.0)
    assert GRID.size == GRID.lambdas.size * GRID.patterns.shape[0]
    assert set(np.unique(sign_patterns(BINS))) <= {-1.0, 0.0, 1.0}
    assert (GRID.lambdas > 0).all() and (GRID.lambdas < 1).all()


@pytest.mark.parametrize("shape", ["over", "under", "split"])
def test_one_label_e_value_has_expectation_at_most_one_under_the_null(shape: str) -> None:
    """Exact expectation over a discrete null: every component, one label."""
    p = np.linspace(0.56, 0.94, 39)
    q = {
        "over": p - TOLERANCE,
        "under": p + TOLERANCE,
        "split": np.where(p > 0.75, p - TOLERANCE, p + TOLERANCE),
    }[shape]
    expectation = np.zeros(GRID.size)
    for pi, qi in zip(p, q, strict=True):
        for y, weight in ((1.0, qi), (0.0, 1 - qi)):
            e = np.exp(log_increments(GRID, sums_of(np.array([pi]), np.array([y])), TOLERANCE))
            expectation += weight * e / p.size
    assert expectation.max() <= 1.0 + 1e-12


def test_batches_are_supermartingale_increments_and_the_mixture_grows_at_most_linearly() -> None:
    """Under the null E[R_n] <= n (Shiryaev-Roberts), so P(alarm within m steps) <= m / A."""
    rng = np.random.default_rng(0)
    streams, steps, threshold = 400, 60, 200.0
    final = np.zeros(streams)
    alarmed = 0
    for s in range(streams):
        detector = Detector.fresh(GRID.log_weights)
        hit = False
        for t in range(steps):
            p, y = at_tolerance(rng, 40, ("over", "under", "split")[s % 3])
            detector.step(log_increments(GRID, sums_of(p, y), TOLERANCE), float(t))
            hit = hit or detector.alarmed(threshold)
        final[s] = math.exp(detector.log_evidence)
        alarmed += hit
    assert final.mean() <= steps * 1.1  # E[R_n] <= n, with Monte Carlo slack
    assert alarmed / streams <= steps / threshold  # the false-alarm bound at m = 60, A = 200


def test_a_calibrated_series_builds_no_evidence() -> None:
    rng = np.random.default_rng(1)
    detector = Detector.fresh(GRID.log_weights)
    for t in range(300):
        p = rng.uniform(0.5, 1.0, 100)
        detector.step(log_increments(GRID, sums_of(p, (rng.random(100) < p).astype(float)), TOLERANCE), t)
    assert detector.log_evidence < math.log(100.0)
    assert detector.labels == 0 and detector.steps == 300  # labels are counted only when passed


def test_order_independence_and_merge() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.5, 1.0, 1000)
    y = (rng.random(1000) < p - 0.05).astype(float)
    whole = log_increments(GRID, sums_of(p, y), TOLERANCE)
    order = rng.permutation(1000)
    shuffled = log_increments(GRID, sums_of(p[order], y[order]), TOLERANCE)
    merged = log_increments(GRID, sums_of(p[:300], y[:300]) + sums_of(p[300:], y[300:]), TOLERANCE)
    np.testing.assert_allclose(shuffled, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(merged, whole, rtol=1e-10, atol=1e-10)
    # Two batches of a detector = their product, whichever order the labels came in within each.
    one, two = Detector.fresh(GRID.log_weights), Detector.fresh(GRID.log_weights)
    one.step(log_increments(GRID, sums_of(p[:500], y[:500]), TOLERANCE), 0)
    two.step(log_increments(GRID, sums_of(p[:500][::-1], y[:500][::-1]), TOLERANCE), 0)
    assert one.log_evidence == pytest.approx(two.log_evidence, abs=1e-9)


def test_label_sums_from_the_sketch_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 5000)
    y = (rng.random(5000) < p).astype(float)
    sketch = CalibrationSketch(120).add(p, y)
    from_sketch = label_sums(sketch.moments, BINS)
    direct = sums_of(p, y)
    for a, b in ((from_sketch.n, direct.n), (from_sketch.d, direct.d), (from_sketch.q, direct.q)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="divide"):
        label_sums(sketch.moments, 7)


@pytest.mark.parametrize(("shape", "shift"), [("over", 0.10), ("under", 0.10), ("top", 0.10)])
def test_a_shift_is_detected_fast_and_dated(shape: str, shift: float) -> None:
    rng = np.random.default_rng(4)
    detector = Detector.fresh(GRID.log_weights)
    threshold, change = 1e5, 200
    for t in range(change + 100):
        p = rng.uniform(0.5, 1.0, 100)
        q = p
        if t >= change:
            if shape == "over":
                q = p - shift
            elif shape == "under":
                q = np.minimum(p + shift, 1.0)
            else:  # only the confidences above 0.9 (a fifth of them), ECE = shift
                q = np.where(p > 0.9, p - 5 * shift, p)
        detector.step(log_increments(GRID, sums_of(p, (rng.random(100) < q).astype(float)), TOLERANCE), t)
        if detector.alarmed(threshold):
            break
    assert change <= t <= change + 15, t  # at most 1,500 labels after the shift at ECE 0.10
    assert detector.change_point is not None and abs(detector.change_point - change) <= 3


def test_paired_increments_bet_against_a_worse_served_score() -> None:
    lambdas = GRID.lambdas
    assert (paired_log_increments(lambdas, 100, 0.0, 0.0, 0.0004) < 0).all()  # no difference: lose
    assert paired_log_increments(lambdas, 1000, 100.0, 20.0, 0.0004).max() > 5  # +0.1 per label: win


def test_detector_rejects_a_mismatched_grid() -> None:
    with pytest.raises(ValueError, match="components"):
        Detector.fresh(GRID.log_weights).step(np.zeros(3), 0.0)
