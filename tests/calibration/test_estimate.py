"""The label-free accuracy estimate: its numbers against a direct computation on the raw arrays, its
coverage on simulated windows, and its honesty when the calibrator has stopped fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.calibration.estimate import Z_95, estimate_accuracy, labelled_bias
from monitor.calibration.sketch import CalibrationSketch
from monitor.evaluation.windows import WindowSpec, evaluate_periods


def window(c: np.ndarray, y: np.ndarray, labelled: np.ndarray, fine_bins: int = 120) -> CalibrationSketch:
    sketch = CalibrationSketch(fine_bins).add_predictions(c)
    if labelled.any():
        sketch.add_labelled(c[labelled], y[labelled])
    return sketch


def test_the_numbers_match_a_direct_computation_on_the_raw_confidences() -> None:
    rng = np.random.default_rng(1)
    c = rng.beta(4, 2, 5000)
    y = rng.random(5000) < c
    labelled = rng.random(5000) < 0.3
    est = estimate_accuracy(window(c, y, labelled))
    assert est is not None
    assert est.estimate == pytest.approx(c.mean(), rel=1e-12)
    direct = Z_95 * math.sqrt(np.sum(c * (1 - c))) / c.size
    # the fine bins' within-bin approximation of sum c^2 is off by at most n / (4 * fine_bins^2)
    assert est.sampling == pytest.approx(direct, rel=2e-3)
    bias, se = labelled_bias(window(c, y, labelled))  # type: ignore[misc]
    assert bias == pytest.approx(np.mean(y[labelled] - c[labelled]), abs=1e-12)
    assert se == pytest.approx(math.sqrt(np.sum(c[labelled] * (1 - c[labelled]))) / labelled.sum(), rel=1e-9)
    assert est.check == "ok" and est.lower == pytest.approx(est.estimate - est.sampling)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
def test_a_fitting_calibrator_covers_realised_accuracy_at_the_nominal_rate(share: float) -> None:
    rng = np.random.default_rng(7)
    covered, n_windows = 0, 600
    for _ in range(n_windows):
        c = rng.beta(5, 2, 1000)
        y = rng.random(1000) < c  # calibrated: right with the probability served
        est = estimate_accuracy(window(c, y, rng.random(1000) < share))
        assert est is not None
        covered += est.lower <= y.mean() <= est.upper
    assert 0.93 <= covered / n_windows <= 0.99  # nominal 95%: measured in benchmarks/accuracy.py too


def test_a_broken_calibrator_is_flagged_and_its_interval_widened_to_cover() -> None:
    rng = np.random.default_rng(3)
    c = rng.beta(5, 2, 3000)  # served confidence mean ~0.71, as a peer's estimator would report
    y = rng.random(3000) < np.clip(c - 0.23, 0, 1)  # realised ~0.48: the calibrator stopped fitting
    est = estimate_accuracy(window(c, y, rng.random(3000) < 0.3))
    assert est is not None and est.check == "biased"
    assert est.bias == pytest.approx(-0.23, abs=0.03)
    assert est.lower <= y.mean() <= est.upper and est.upper - est.lower > 0.4
    no_labels = estimate_accuracy(window(c, y, np.zeros(3000, bool)))
    assert no_labels is not None and no_labels.check == "unchecked"  # nothing can tell without labels


def test_every_window_is_checked_on_the_labels_of_the_most_labelled_window() -> None:
    rng = np.random.default_rng(5)
    c = rng.beta(5, 2, 4000)
    y = rng.random(4000) < np.clip(c - 0.2, 0, 1)
    old = window(c[:3000], y[:3000], np.ones(3000, bool))  # labelled long ago
    new = window(c[3000:], y[3000:], np.zeros(1000, bool))  # the newest hour: no labels yet
    key = ("m", "default", "calibrated")
    periods = {"1h": ({key: new}, {}), "24h": ({key: old.merge(new)}, {})}
    stats = evaluate_periods([WindowSpec("1h", 3600), WindowSpec("24h", 86400)], periods, 15, n_boot=50)
    hour = next(s for s in stats if (s.window, s.segment) == ("1h", "default"))
    assert hour.labelled == 0 and hour.estimate_check == "biased" and hour.estimate_bias_window == "24h"
    assert hour.estimate_bias == pytest.approx(float(np.mean(y[:3000] - c[:3000])), abs=1e-9)
    assert hour.estimated_accuracy_lower is not None and hour.estimated_accuracy_upper is not None
    assert hour.estimated_accuracy_lower <= y[3000:].mean() <= hour.estimated_accuracy_upper
    day = next(s for s in stats if (s.window, s.segment, s.score) == ("24h", "default", "calibrated"))
    assert day.estimate_bias_window == "24h" and day.estimate_bias == hour.estimate_bias
    raw = [s for s in stats if s.score == "raw"]
    assert all(s.estimated_accuracy is None for s in raw)  # the estimate is of served confidences
