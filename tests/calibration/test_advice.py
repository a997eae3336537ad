"""Threshold advice: the risk-coverage numbers against a direct computation, the guarantee on
held-out traffic, and the coverage it leaves against the best threshold chosen with hindsight."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from monitor.calibration.advice import advise, risk_coverage
from monitor.calibration.sketch import CalibrationSketch


def test_risk_coverage_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(2)
    c = rng.beta(5, 2, 4000)
    y = rng.random(4000) < c
    labelled = rng.random(4000) < 0.5
    sketch = CalibrationSketch(60).add_predictions(c).add_labelled(c[labelled], y[labelled])
    for point in risk_coverage(sketch):
        accepted = np.floor(c * 60) / 60 >= point.threshold - 1e-12
        assert point.coverage == pytest.approx(accepted.mean())
        assert point.labelled == (accepted & labelled).sum()
        if point.labelled:
            right = int((accepted & labelled & y).sum())
            assert point.precision == pytest.approx(right / point.labelled)
            expected_lower = beta.ppf(0.05, right, point.labelled - right + 1) if right else 0.0
            assert point.precision_lower == pytest.approx(expected_lower)


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_the_advised_threshold_keeps_its_promise_on_held_out_traffic(target: float) -> None:
    rng = np.random.default_rng(11)
    held_c = rng.beta(5, 2, 300_000)
    held_y = rng.random(held_c.size) < held_c
    grid = np.arange(120) / 120
    best = next(t for t in grid if held_y[held_c >= t].mean() >= target)  # hindsight, on the held-out
    met, coverage = 0, []
    for _ in range(60):
        c = rng.beta(5, 2, 20_000)
        advice = advise(CalibrationSketch().add(c, rng.random(c.size) < c), target)
        if advice.threshold is None:
            met += 1
            coverage.append(0.0)
            continue
        accepted = held_c >= advice.threshold
        met += held_y[accepted].mean() >= target
        coverage.append(float(accepted.mean()))
    assert met / 60 >= 0.95
    assert (held_c >= best).mean() - np.mean(coverage) < 0.06  # within a few points of hindsight's


def test_no_threshold_when_the_target_is_out_of_reach_and_the_action_follows_the_advice() -> None:
    rng = np.random.default_rng(1)
    c = rng.uniform(0.3, 0.6, 5000)
    unreachable = advise(CalibrationSketch().add(c, rng.random(c.size) < c), 0.95)
    assert unreachable.threshold is None and unreachable.coverage == 0.0
    assert unreachable.action(0.99) == "review"
    c = rng.beta(8, 1.5, 20_000)
    advice = advise(CalibrationSketch().add(c, rng.random(c.size) < c), 0.9)
    assert advice.threshold is not None and advice.precision_lower is not None
    assert advice.precision_lower >= 0.9 - 1e-9  # the exact bound passes exactly when the test does
    assert advice.action(advice.threshold) == "accept" and advice.action(advice.threshold - 0.01) == "review"
    with pytest.raises(ValueError, match="target precision"):
        advise(CalibrationSketch().add(c), 1.0)
