"""Calibrators: real miscalibrated models, reference agreement, monotonicity, JSON, edge cases."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB

from monitor.calibration.calibrators import (
    CALIBRATORS,
    IdentityCalibrator,
    TemperatureScaling,
    from_dict,
    make,
)
from monitor.calibration.metrics import expected_calibration_error as ece

FITTED = [name for name in CALIBRATORS if name != "identity"]


def digits_split(seed: int) -> tuple:
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, train_size=0.3, random_state=seed, stratify=y)
    X_cal, X_test, y_cal, y_test = train_test_split(
        X_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest
    )
    return X_train, y_train, X_cal, y_cal, X_test, y_test


@pytest.fixture(scope="module", params=[0, 1, 2])
def overconfident_naive_bayes(request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    """GaussianNB on scikit-learn's digits: mean confidence ~0.99 at ~85% accuracy."""
    X_train, y_train, X_cal, y_cal, X_test, y_test = digits_split(request.param)
    model = GaussianNB().fit(X_train, y_train)
    cal, test = model.predict_proba(X_cal), model.predict_proba(X_test)
    return {
        "cal_p": cal.max(1), "cal_y": (cal.argmax(1) == y_cal).astype(float),
        "test_p": test.max(1), "test_y": (test.argmax(1) == y_test).astype(float),
    }  # fmt: skip


@pytest.mark.parametrize("method", FITTED)
def test_every_calibrator_halves_ece_on_a_real_overconfident_model(
    overconfident_naive_bayes: dict[str, np.ndarray], method: str
) -> None:
    data = overconfident_naive_bayes
    raw = ece(data["test_p"], data["test_y"])
    assert raw > 0.1  # the model really is miscalibrated
    assert data["test_p"].mean() > data["test_y"].mean() + 0.1  # ... and overconfident
    calibrated = make(method).fit(data["cal_p"], data["cal_y"]).transform(data["test_p"])
    assert ece(calibrated, data["test_y"]) < raw / 2


def test_multiclass_temperature_matches_scikit_learn() -> None:
    for seed in (0, 1):
        X_train, y_train, X_cal, y_cal, X_test, y_test = digits_split(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=100, max_iter=5000).fit(X_train, y_train)  # weakly regularised
        reference = CalibratedClassifierCV(FrozenEstimator(model), method="temperature").fit(X_cal, y_cal)
        beta = float(reference.calibrated_classifiers_[0].calibrators[0].beta_)
        ours = TemperatureScaling().fit_logits(model.decision_function(X_cal), y_cal)
        assert ours.temperature == pytest.approx(1.0 / beta, rel=1e-5)
        assert ours.temperature > 1.5  # overconfident model: softened
        np.testing.assert_allclose(
            ours.transform_logits(model.decision_function(X_test)),
            reference.predict_proba(X_test).max(1),
            atol=1e-6,
        )
        correct = (model.predict(X_test) == y_test).astype(float)
        assert ece(ours.transform_logits(model.decision_function(X_test)), correct) < ece(
            model.predict_proba(X_test).max(1), correct
        )


def test_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(20000, 5))
    probs = np.exp(logits / 2.5)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in probs])
    assert TemperatureScaling().fit_logits(logits, labels).temperature == pytest.approx(2.5, rel=0.05)


scores = arrays(np.float64, st.integers(3, 200), elements=st.floats(0.0, 1.0, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(p=scores, seed=st.integers(0, 2**32 - 1), method=st.sampled_from(sorted(CALIBRATORS)))
def test_calibrators_are_monotone_and_round_trip_through_json(p: np.ndarray, seed: int, method: str) -> None:
    y = (np.random.default_rng(seed).random(p.size) < p).astype(float)
    calibrator = make(method).fit(p, y)
    grid = np.linspace(0, 1, 501)
    out = calibrator.transform(grid)
    assert np.all(np.diff(out) >= -1e-12)
    assert np.all((out >= 0) & (out <= 1))
    restored = from_dict(json.loads(json.dumps(calibrator.to_dict())))
    np.testing.assert_array_equal(restored.transform(grid), out)
    assert restored.method == method


@pytest.mark.parametrize("method", FITTED)
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_single_class_labels_give_finite_non_certain_maps(method: str, label: float) -> None:
    p = np.linspace(0.05, 0.95, 30)
    out = make(method).fit(p, np.full(30, label)).transform(np.array([0.0, 0.3, 0.7, 1.0]))
    assert np.all(np.isfinite(out))
    assert np.all((out > 0.0) & (out < 1.0))  # a finite sample never justifies certainty
    if label == 1.0:
        assert out[1] >= 0.3 - 1e-9  # every answer was right: confidence does not drop
    else:
        assert out[2] <= 0.7 + 1e-9


@pytest.mark.parametrize("method", sorted(CALIBRATORS))
@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_samples_and_exact_zero_one_confidences(method: str, n: int) -> None:
    p = np.array([1.0, 0.0, 1.0, 0.5, 1.0])[:n]
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])[:n]
    out = make(method).fit(p, y).transform(np.array([0.0, 0.5, 1.0]))
    assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
    assert np.all(np.diff(out) >= -1e-12)


def test_identity_and_bad_inputs() -> None:
    p = np.array([0.2, 0.9])
    np.testing.assert_array_equal(IdentityCalibrator().fit(p, [0, 1]).transform(p), p)
    with pytest.raises(ValueError, match="unknown calibrator"):
        from_dict({"method": "magic", "params": {}})
    with pytest.raises(ValueError, match="empty"):
        make("platt").fit([], [])
    with pytest.raises(ValueError, match="n_classes"):
        TemperatureScaling().fit_logits(np.zeros(5), np.zeros(5, dtype=int))
