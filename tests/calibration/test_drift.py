"""Drift statistics on histograms against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from monitor.calibration.drift import PSI_EPSILON, js_distance, ks_statistic, psi, wasserstein


def test_psi_hand_computed_and_empty_bins() -> None:
    expected, actual = np.array([50, 30, 20]), np.array([30, 30, 40])
    hand = (0.3 - 0.5) * math.log(0.3 / 0.5) + 0 + (0.4 - 0.2) * math.log(0.4 / 0.2)
    assert psi(expected, actual) == pytest.approx(hand)
    assert psi(expected, expected) == 0.0
    assert math.isfinite(psi([10, 0], [0, 10]))  # empty bins floored, not infinite
    assert psi([10, 0], [0, 10]) == pytest.approx(
        2 * (1 - 2 * PSI_EPSILON) * math.log((1 - PSI_EPSILON) / PSI_EPSILON), rel=1e-3
    )


def test_ks_and_wasserstein_equal_scipy_on_binned_samples() -> None:
    rng = np.random.default_rng(0)
    bins = 20
    centres = (np.arange(bins) + 0.5) / bins
    a = rng.integers(0, bins, 3000)
    b = np.clip(rng.integers(0, bins, 2000) + 2, 0, bins - 1)
    ha, hb = np.bincount(a, minlength=bins), np.bincount(b, minlength=bins)
    assert ks_statistic(ha, hb) == pytest.approx(ks_2samp(centres[a], centres[b]).statistic, abs=1e-12)
    assert wasserstein(ha, hb) == pytest.approx(wasserstein_distance(centres[a], centres[b]), abs=1e-12)


def test_js_distance_direct_formula() -> None:
    p, q = np.array([0.1, 0.4, 0.5]), np.array([0.3, 0.3, 0.4])
    mid = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / mid)) + 0.5 * np.sum(q * np.log2(q / mid))
    assert js_distance(p * 10, q * 7) == pytest.approx(math.sqrt(divergence))
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1, 2], [1, 2, 3], "differ in bins"),
        ([0, 0], [1, 1], "no observations"),
        ([-1, 2], [1, 1], ">= 0"),
        ([], [], "non-empty"),
    ],
)
def test_bad_histograms(a: list[int], b: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        psi(a, b)
