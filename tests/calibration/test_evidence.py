"""The e-detector: valid under the null (supermartingale, false-alarm bound), order-independent,
mergeable, fast after a shift, and placing the change point where the shift began."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.calibration import metrics
from monitor.calibration.evidence import (
    LAMBDAS,
    BetGrid,
    Detector,
    bet_sums,
    idle_costs,
    log_increments,
    paired_log_increments,
    sign_patterns,
)

BINS = 15
TOLERANCE = 0.02
GRID = BetGrid.for_bins(BINS)


def bets(p: np.ndarray, y: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """The log wealth of every component over these labels, as the fold and the detector compute it."""
    index = metrics.bin_index(p, BINS)
    n = np.bincount(index, minlength=BINS).astype(float)
    return log_increments(GRID, bet_sums(p, y, index, BINS, tolerance), idle_costs(n, tolerance))


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
            e = np.exp(bets(np.array([pi]), np.array([y])))
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
            detector.step(bets(p, y), float(t))
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
        detector.step(bets(p, (rng.random(100) < p).astype(float)), t)
    assert detector.log_evidence < math.log(100.0)
    assert detector.labels == 0 and detector.steps == 300  # labels are counted only when passed


def test_order_independence_and_merge() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0.5, 1.0, 1000)
    y = (rng.random(1000) < p - 0.05).astype(float)
    whole = bets(p, y)
    order = rng.permutation(1000)
    shuffled = bets(p[order], y[order])
    merged = bets(p[:300], y[:300]) + bets(p[300:], y[300:])
    np.testing.assert_allclose(shuffled, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(merged, whole, rtol=1e-10, atol=1e-10)
    # Two batches of a detector = their product, whichever order the labels came in within each.
    one, two = Detector.fresh(GRID.log_weights), Detector.fresh(GRID.log_weights)
    one.step(bets(p[:500], y[:500]), 0)
    two.step(bets(p[:500][::-1], y[:500][::-1]), 0)
    assert one.log_evidence == pytest.approx(two.log_evidence, abs=1e-9)


def test_the_folded_sums_are_the_exact_wealth_of_each_bet() -> None:
    """Independent computation: the product of (1 + λx) label by label, for a few components."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 2000)
    y = (rng.random(2000) < p).astype(float)
    index = metrics.bin_index(p, BINS)
    got = bets(p, y).reshape(len(LAMBDAS), -1)
    for k, lam in enumerate(LAMBDAS):
        for row in (0, 1, 5, len(GRID.patterns) - 1):
            s = GRID.patterns[row][index]
            x = (s * (p - y) - TOLERANCE) / (1 + TOLERANCE)
            x = np.where(s == 0, -TOLERANCE / (1 + TOLERANCE), x)
            assert got[k, row] == pytest.approx(np.log1p(lam * x).sum(), rel=1e-9, abs=1e-9)


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
        detector.step(bets(p, (rng.random(100) < q).astype(float)), t)
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
