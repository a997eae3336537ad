"""Metrics against published reference values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from monitor.calibration import metrics as m

# scikit-learn's calibration_curve docstring example.
SK_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
SK_P = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.7, 0.8, 0.9, 1.0])
# torchmetrics' BinaryCalibrationError docstring example.
TM_P = np.array([0.25, 0.25, 0.55, 0.75, 0.75])
TM_Y = np.array([0, 0, 1, 1, 1])


def test_scikit_learn_docstring_reference_values() -> None:
    assert m.expected_calibration_error(SK_P, SK_Y, n_bins=3) == pytest.approx(0.138889, abs=1e-6)
    assert m.brier_score(SK_P, SK_Y) == pytest.approx(0.0625, abs=1e-12)
    z, p_value = m.spiegelhalter_z(SK_P, SK_Y)
    assert z == pytest.approx(-1.44123, abs=1e-5)
    assert p_value == pytest.approx(0.1495, abs=1e-4)
    table = m.reliability_table(SK_P, SK_Y, n_bins=3)
    prob_true, prob_pred = calibration_curve(SK_Y, SK_P, n_bins=3)
    np.testing.assert_allclose(table.accuracy, prob_true)
    np.testing.assert_allclose(table.mean_confidence, prob_pred)


def test_torchmetrics_docstring_reference_values() -> None:
    assert m.expected_calibration_error(TM_P, TM_Y, n_bins=2) == pytest.approx(0.2900, abs=1e-4)
    assert m.rms_calibration_error(TM_P, TM_Y, n_bins=2) == pytest.approx(0.2918, abs=1e-4)
    assert m.maximum_calibration_error(TM_P, TM_Y, n_bins=2) == pytest.approx(0.3167, abs=1e-4)


def direct_bins(p: np.ndarray, n_bins: int) -> list[list[int]]:
    """Independent binning: a loop over explicit (lo, hi] intervals, 0 in the first."""
    edges = np.linspace(0, 1, n_bins + 1)
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for i, value in enumerate(p):
        for b in range(n_bins):
            if (edges[b] < value <= edges[b + 1]) or (b == 0 and value == 0.0):
                bins[b].append(i)
                break
    return bins


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_binned_metrics_agree_with_direct_loops_and_scikit_learn(seed: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    # include values exactly on bin edges, 0 and 1
    p = np.concatenate([rng.random(400) ** 0.5, np.linspace(0, 1, n_bins + 1), [0.0, 1.0]])
    y = (rng.random(p.size) < p**2).astype(int)
    bins = direct_bins(p, n_bins)
    n = p.size
    gaps = [abs(y[b].mean() - p[b].mean()) if b else 0.0 for b in bins]
    assert m.expected_calibration_error(p, y, n_bins) == pytest.approx(
        sum(len(b) * g for b, g in zip(bins, gaps, strict=True)) / n, abs=1e-12
    )
    assert m.maximum_calibration_error(p, y, n_bins) == pytest.approx(max(gaps), abs=1e-12)
    assert m.rms_calibration_error(p, y, n_bins) == pytest.approx(
        math.sqrt(sum(len(b) * g * g for b, g in zip(bins, gaps, strict=True)) / n), abs=1e-12
    )
    table = m.reliability_table(p, y, n_bins)
    assert [int(c) for c in table.count] == [len(b) for b in bins]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins)
    occupied = table.count > 0
    np.testing.assert_allclose(table.accuracy[occupied], prob_true, atol=1e-12)
    np.testing.assert_allclose(table.mean_confidence[occupied], prob_pred, atol=1e-12)


def test_quantile_strategy_matches_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(5, 2, 3000)
    y = (rng.random(p.size) < p).astype(int)
    table = m.reliability_table(p, y, n_bins=10, strategy="quantile")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    occupied = table.count > 0
    np.testing.assert_allclose(table.accuracy[occupied], prob_true, atol=1e-12)
    np.testing.assert_allclose(table.mean_confidence[occupied], prob_pred, atol=1e-12)


def kumar_debiased_direct(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """Kumar, Liang & Ma (2019), written out per bin: plug-in squared error minus its variance."""
    total = 0.0
    for members in direct_bins(p, n_bins):
        if len(members) < 2:
            continue
        acc = float(np.mean(y[members]))
        conf = float(np.mean(p[members]))
        total += len(members) / len(p) * ((conf - acc) ** 2 - acc * (1 - acc) / (len(members) - 1))
    return math.sqrt(max(total, 0.0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_debiased_ce_matches_direct_kumar_estimator(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random(800)
    y = (rng.random(800) < np.clip(p + 0.1, 0, 1)).astype(int)
    assert m.debiased_calibration_error(p, y, 15) == pytest.approx(kumar_debiased_direct(p, y, 15), abs=1e-12)


def test_debiased_ce_removes_the_plugin_bias_on_calibrated_data() -> None:
    rng = np.random.default_rng(11)
    plugin, debiased = [], []
    for _ in range(50):
        p = rng.random(300)
        y = (rng.random(300) < p).astype(int)  # perfectly calibrated
        plugin.append(m.rms_calibration_error(p, y, 15) ** 2)
        debiased.append(m.debiased_calibration_error(p, y, 15, squared=True))
    # Expected plug-in bias ~ sum_b acc_b (1 - acc_b) / N ~ 15 * 1/6 / 300 ~ 0.008.
    assert np.mean(plugin) > 0.005
    assert abs(np.mean(debiased)) < np.mean(plugin) / 5  # the debiased one is centred near 0


def test_brier_nll_auroc_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(1000)
    y = (rng.random(1000) < p**1.3).astype(int)
    p[:5] = [0.0, 1.0, 0.5, 0.5, 0.5]
    assert m.brier_score(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m.negative_log_likelihood(p, y) == pytest.approx(
        log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-9
    )
    assert m.auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert math.isnan(m.auroc(p, np.ones_like(y)))


def test_bins_are_right_closed_with_zero_in_the_first() -> None:
    assert m.bin_index(np.array([0.0, 0.5, 0.5000001, 1.0]), 2).tolist() == [0, 0, 1, 1]
    assert m.bin_index(np.array([1 / 3, 2 / 3]), 3).tolist() == [0, 1]


def test_bootstrap_ci_brackets_the_estimate_and_narrows_with_data() -> None:
    rng = np.random.default_rng(8)
    widths = []
    for n in (500, 5000):
        p = rng.random(n)
        y = (rng.random(n) < p * 0.8).astype(int)
        low, high = m.ece_bootstrap_ci(p, y, n_boot=400, seed=1)
        assert low < m.expected_calibration_error(p, y) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    assert m.ece_bootstrap_ci(p, y, n_boot=50, seed=3) == m.ece_bootstrap_ci(p, y, n_boot=50, seed=3)


def test_classwise_ece_is_mean_of_per_class_ece() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(600, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, 600)
    expected = np.mean([m.expected_calibration_error(probs[:, k], labels == k) for k in range(4)])
    assert m.classwise_ece(probs, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="labels must be integers"):
        m.classwise_ece(probs, labels + 10)


@pytest.mark.parametrize(
    ("confidence", "correct", "message"),
    [
        ([0.5, np.nan], [1, 0], "NaN or infinite"),
        ([0.5, 1.5], [1, 0], r"must lie in \[0, 1\]"),
        ([0.5, 0.6], [1, 0, 1], "shape"),
        ([[0.5]], [[1]], "1-D"),
        ([], [], "empty"),
        ([0.5, 0.6], [1, 2], "only 0/1"),
    ],
)
def test_inputs_are_validated(confidence: list[float], correct: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.expected_calibration_error(confidence, correct)


def test_ci_lower_bound_does_not_raise_false_alarms_on_calibrated_small_samples() -> None:
    """The drift rule judges the CI lower bound: on perfectly calibrated data it must stay low."""
    # Measured (see docs/architecture.md): with 15 bins the plug-in ECE of a perfectly calibrated
    # model is ~0.056 at n=500 and ~0.039 at n=1000; at n=1000 the lower bound stays under 0.05.
    rng = np.random.default_rng(21)
    lowers, contains = [], 0
    for _ in range(40):
        p = rng.random(1000)
        y = (rng.random(1000) < p).astype(int)
        low, high = m.ece_bootstrap_ci(p, y, n_boot=300, seed=rng)
        lowers.append(low)
        contains += low <= m.expected_calibration_error(p, y) <= high
    assert contains == 40  # the bias-corrected interval always holds its own estimate
    assert np.mean(np.array(lowers) > 0.05) <= 0.05
