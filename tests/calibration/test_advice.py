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
        accepted = c > point.threshold  # bins are (lo, hi]: accepting a bin accepts above its edge
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


def test_the_tail_gives_a_099_target_thresholds_between_the_top_uniform_edges() -> None:
    """Above 0.95 the uniform edges are 1/120 apart; the tail's edges let a 0.99 target stop closer
    to hindsight's threshold, keeping the promise. The stream's confidences are Beta(20, 0.5) and
    calibrated, so the precision above t is exactly E[c | c > t]."""
    a, b = 20.0, 0.5
    stream = beta(a, b)

    def precision_above(t: float) -> float:
        return float(a / (a + b) * beta(a + 1, b).sf(t) / stream.sf(t))

    grid = np.linspace(0.9, 0.99999, 20_000)
    hindsight = stream.sf(next(t for t in grid if precision_above(t) >= 0.99))
    rng = np.random.default_rng(5)
    met, coverage, uniform, off_grid = 0, [], [], 0
    for _ in range(40):
        c = rng.beta(a, b, 5_000)
        sketch = CalibrationSketch().add(c, rng.random(c.size) < c)
        t = advise(sketch, 0.99).threshold
        off_grid += t is not None and abs(t * 120 - round(t * 120)) > 1e-6
        met += t is None or precision_above(t) >= 0.99  # no threshold: nothing accepted, nothing wrong
        coverage.append(float(stream.sf(t)) if t is not None else 0.0)
        sketch.tail[:] = 0  # the same labels read on the uniform edges only
        coarse = advise(sketch, 0.99).threshold
        uniform.append(float(stream.sf(coarse)) if coarse is not None else 0.0)
    assert met / 40 >= 0.95
    assert off_grid >= 20, off_grid  # mostly edges the uniform bins lack
    assert np.mean(coverage) > np.mean(uniform) + 0.005, (np.mean(coverage), np.mean(uniform))
    assert hindsight - np.mean(coverage) < 0.2, (hindsight, np.mean(coverage))


def test_a_window_with_buckets_folded_before_the_tail_falls_back_to_uniform_edges() -> None:
    rng = np.random.default_rng(6)
    c = rng.beta(60, 0.6, 20_000)
    y = rng.random(c.size) < c
    old = CalibrationSketch().add(c, y)
    old.tail[:] = 0  # as loaded from buckets written before the tail existed
    mixed = old.merge(CalibrationSketch().add(c[:100], y[:100]))
    for sketch in (old, mixed):
        points = risk_coverage(sketch)
        assert len(points) == 120
        assert [p.threshold for p in points] == pytest.approx(list(np.arange(119, -1, -1) / 120))


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
