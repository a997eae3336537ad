"""CalibrationSketch: exact metrics from moments, merge algebra, coarsening, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monitor.calibration import metrics as m
from monitor.calibration.sketch import TAIL_BINS, CalibrationSketch, tail_edges, tail_start_bin

FINE = 120
EDGES = np.linspace(0, 1, FINE + 1)


def off_edges(p: np.ndarray) -> bool:
    """True when no confidence lies (within 1e-9) on a fine bin edge other than 0."""
    distance = np.abs(p[:, None] - EDGES[None, 1:])
    return bool(np.all(distance > 1e-9))


probabilities = arrays(np.float64, st.integers(2, 300), elements=st.floats(0.0, 1.0, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(
    p=probabilities,
    data=st.data(),
    n_bins=st.sampled_from([1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 60, 120]),
)
def test_sketch_metrics_equal_raw_metrics(p: np.ndarray, data: st.DataObject, n_bins: int) -> None:
    assume(off_edges(p))
    y = np.array(data.draw(st.lists(st.booleans(), min_size=p.size, max_size=p.size)), dtype=float)
    sketch = CalibrationSketch.from_arrays(p, y, FINE)
    assert sketch.ece(n_bins) == pytest.approx(m.expected_calibration_error(p, y, n_bins), abs=1e-9)
    assert sketch.mce(n_bins) == pytest.approx(m.maximum_calibration_error(p, y, n_bins), abs=1e-9)
    assert sketch.rms_ce(n_bins) == pytest.approx(m.rms_calibration_error(p, y, n_bins), abs=1e-9)
    assert sketch.debiased_ce(n_bins, squared=True) == pytest.approx(
        m.debiased_calibration_error(p, y, n_bins, squared=True), abs=1e-9
    )
    assert sketch.brier() == pytest.approx(m.brier_score(p, y), abs=1e-9)
    assert sketch.nll() == pytest.approx(m.negative_log_likelihood(p, y), abs=1e-9)
    assert sketch.accuracy() == pytest.approx(y.mean(), abs=1e-12)
    assert sketch.mean_confidence() == pytest.approx(p.mean(), abs=1e-12)
    z_raw, p_raw = m.spiegelhalter_z(p, y)
    z_sk, p_sk = sketch.spiegelhalter_z()
    variance = float(np.sum((1 - 2 * p) ** 2 * p * (1 - p)))
    if variance > 1e-9:  # well-conditioned: the moment form must agree
        assert z_sk == pytest.approx(z_raw, rel=1e-6, abs=1e-6)
        assert p_sk == pytest.approx(p_raw, abs=1e-6)
    elif variance == 0.0:  # every confidence is 0, 1/2 or 1: both report the test as undefined
        assert np.isnan(z_raw) and np.isnan(z_sk)
    table = sketch.reliability_table(n_bins)
    raw = m.reliability_table(p, y, n_bins)
    np.testing.assert_array_equal(table.count, raw.count)
    np.testing.assert_allclose(table.accuracy, raw.accuracy, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(table.mean_confidence, raw.mean_confidence, atol=1e-9, equal_nan=True)


def test_spiegelhalter_from_moments_matches_on_real_spread() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p**1.2).astype(float)
    sketch = CalibrationSketch.from_arrays(p, y)
    assert sketch.spiegelhalter_z() == pytest.approx(m.spiegelhalter_z(p, y), rel=1e-9)


sketch_inputs = st.tuples(probabilities, st.integers(0, 2**32 - 1))


def build(arg: tuple[np.ndarray, int]) -> CalibrationSketch:
    p, seed = arg
    y = np.random.default_rng(seed).random(p.size) < 0.6
    labelled = np.random.default_rng(seed + 1).random(p.size) < 0.7
    sketch = CalibrationSketch(FINE).add_predictions(p)
    if labelled.any():
        sketch.add_labelled(p[labelled], y[labelled])
    return sketch


@settings(max_examples=100, deadline=None)
@given(a=sketch_inputs, b=sketch_inputs, c=sketch_inputs)
def test_merge_is_commutative_and_associative(a: tuple, b: tuple, c: tuple) -> None:
    sa, sb, sc = build(a), build(b), build(c)
    assert sa.merge(sb) == sb.merge(sa)  # float addition is commutative: exact
    left = sa.merge(sb).merge(sc)
    right = sa.merge(sb.merge(sc))
    np.testing.assert_allclose(left.moments, right.moments, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(left.moments[[0, 2]], right.moments[[0, 2]])  # counts exact


def test_merge_equals_sketch_of_the_union() -> None:
    rng = np.random.default_rng(4)
    p1, p2 = rng.random(1000), rng.random(700)
    y1, y2 = rng.random(1000) < 0.5, rng.random(700) < 0.8
    union = CalibrationSketch.from_arrays(np.concatenate([p1, p2]), np.concatenate([y1, y2]))
    merged = CalibrationSketch.from_arrays(p1, y1).merge(CalibrationSketch.from_arrays(p2, y2))
    np.testing.assert_allclose(merged.moments, union.moments, rtol=1e-12)
    assert (
        CalibrationSketch.merge_all(
            [CalibrationSketch.from_arrays(p1, y1), CalibrationSketch.from_arrays(p2, y2)]
        )
        == merged
    )


def test_late_labels_equal_labels_at_once() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(500)
    y = rng.random(500) < p
    at_once = CalibrationSketch.from_arrays(p, y)
    late = CalibrationSketch().add_predictions(p)
    assert late.labelled == 0 and late.predictions == 500
    late.add_labelled(p[:200], y[:200]).add_labelled(p[200:], y[200:])
    np.testing.assert_allclose(late.moments, at_once.moments, rtol=1e-12)


def test_unlabelled_predictions_count_only_in_the_histogram() -> None:
    sketch = (
        CalibrationSketch()
        .add(np.array([0.1, 0.9]), np.array([0, 1]))
        .add_predictions(np.array([0.95, 0.96]))
    )
    assert sketch.predictions == 4 and sketch.labelled == 2
    assert sketch.histogram(4).tolist() == [1, 0, 0, 3]
    assert sketch.mean_confidence(labelled_only=False) == pytest.approx((0.1 + 0.9 + 0.95 + 0.96) / 4)
    assert sketch.mean_confidence() == pytest.approx(0.5)


def test_coarsen_requires_a_divisor() -> None:
    sketch = CalibrationSketch.from_arrays(np.array([0.3]), np.array([1]))
    assert sketch.coarsen(15).fine_bins == 15
    with pytest.raises(ValueError, match="must divide"):
        sketch.coarsen(7)
    with pytest.raises(ValueError, match="cannot merge"):
        sketch.merge(CalibrationSketch(60))


def test_serialisation_round_trips_compactly() -> None:
    rng = np.random.default_rng(1)
    sketch = CalibrationSketch.from_arrays(rng.random(100), rng.random(100) < 0.5)
    blob = sketch.to_bytes()
    assert len(blob) == 8 + 10 * (120 + TAIL_BINS) * 8
    assert CalibrationSketch.from_bytes(blob) == sketch
    before_the_tail = blob[:8] + sketch.uniform.astype("<f8").tobytes()
    old = CalibrationSketch.from_bytes(before_the_tail)
    assert np.array_equal(old.uniform, sketch.uniform) and not old.tail.any()
    assert CalibrationSketch.from_dict(sketch.to_dict()) == sketch
    with pytest.raises(ValueError, match="not a serialised"):
        CalibrationSketch.from_bytes(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="truncated"):
        CalibrationSketch.from_bytes(blob[:-8])


@pytest.mark.parametrize("fine_bins", [120, 60, 2])
def test_the_tail_recounts_the_top_bins_finer_and_no_metric_reads_it(fine_bins: int) -> None:
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.beta(20, 0.5, 5000), [1.0, 0.95, tail_edges(fine_bins)[5]]])
    y = rng.random(p.size) < p
    sketch = CalibrationSketch(fine_bins).add_predictions(p).add_labelled(p[::2], y[::2])
    start = tail_start_bin(fine_bins)
    edges = np.append(tail_edges(fine_bins), 1.0)
    assert edges[0] == pytest.approx(start / fine_bins)
    in_tail = p > edges[0]
    for k in range(TAIL_BINS):  # each sub-bin holds exactly the confidences in (lo, hi]
        inside = (p > edges[k]) & (p <= edges[k + 1]) if k < TAIL_BINS - 1 else p > edges[k]
        assert sketch.tail[0, k] == inside.sum()
        assert sketch.tail[1, k] == pytest.approx(p[inside].sum())
    assert sketch.tail[0].sum() == in_tail.sum() == sketch.uniform[0, start:].sum()
    assert sketch.tail[2].sum() == sketch.uniform[2, start:].sum()  # labels too
    without = CalibrationSketch(fine_bins, np.concatenate([sketch.uniform, np.zeros_like(sketch.tail)], 1))
    assert sketch.metrics(fine_bins) == without.metrics(fine_bins)
    assert sketch.predictions == p.size
    coarse = sketch.coarsen(1)
    assert np.array_equal(coarse.tail, sketch.tail) and coarse.predictions == p.size


def test_equal_mass_ece_approximates_quantile_ece() -> None:
    rng = np.random.default_rng(6)
    p = rng.beta(8, 2, 20000)
    y = (rng.random(p.size) < p**1.5).astype(float)
    sketch = CalibrationSketch.from_arrays(p, y)
    approx = sketch.ece(10, strategy="quantile")
    exact = m.expected_calibration_error(p, y, 10, strategy="quantile")
    assert approx == pytest.approx(exact, abs=0.01)


def test_parametric_bootstrap_ci_agrees_with_resampling_bootstrap() -> None:
    rng = np.random.default_rng(12)
    p = rng.random(4000)
    y = (rng.random(4000) < p * 0.85).astype(float)
    sketch = CalibrationSketch.from_arrays(p, y)
    low, high = sketch.ece_bootstrap_ci(n_boot=800, seed=2)
    ref_low, ref_high = m.ece_bootstrap_ci(p, y, n_boot=800, seed=2)
    assert low < sketch.ece() < high
    assert low == pytest.approx(ref_low, abs=0.01) and high == pytest.approx(ref_high, abs=0.01)


def test_metrics_bundle_and_empty_sketch() -> None:
    with pytest.raises(ValueError, match="no labelled"):
        CalibrationSketch().add_predictions(np.array([0.5])).ece()
    rng = np.random.default_rng(2)
    p = rng.random(300)
    y = rng.random(300) < p
    bundle = CalibrationSketch.from_arrays(p, y).metrics()
    assert bundle.labelled == 300 and bundle.ece == pytest.approx(m.expected_calibration_error(p, y))


def test_spiegelhalter_degenerate_confidences_are_undefined_in_both_forms() -> None:
    p = np.array([0.0, 0.5, 1.0, 0.5, 1.0])
    y = np.array([0, 1, 1, 0, 1])
    assert all(np.isnan(v) for v in m.spiegelhalter_z(p, y))
    assert all(np.isnan(v) for v in CalibrationSketch.from_arrays(p, y).spiegelhalter_z())
