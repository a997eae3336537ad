"""Candidate selection and the validation gate on real miscalibrated predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB

from monitor.calibration.calibrators import IdentityCalibrator, PlattScaling, make
from monitor.calibration.selection import fit_candidates, select_best, time_split, validation_gate


@pytest.fixture(scope="module", params=[0, 1, 2])
def stream(request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    """An overconfident model's labelled predictions in time order (GaussianNB on digits)."""
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(
        X, y, train_size=0.2, random_state=request.param, stratify=y
    )
    proba = GaussianNB().fit(X_train, y_train).predict_proba(X_rest)
    return {
        "p": proba.max(1),
        "y": (proba.argmax(1) == y_rest).astype(float),
        "ts": np.arange(len(y_rest), dtype=float),
    }


def test_time_split_fits_on_older_and_validates_on_newest() -> None:
    ts = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 0.0, 6.0, 7.0, 9.0, 8.0])
    p = ts / 10
    split = time_split(p, (ts % 2 == 0), ts, validation_fraction=0.3)
    assert split.fit_confidence.max() < split.val_confidence.min()
    assert sorted(split.val_confidence.tolist()) == [0.7, 0.8, 0.9]
    with pytest.raises(ValueError, match="at least 4"):
        time_split([0.5, 0.5], [1, 0], [1, 2])


def test_candidates_selection_and_promotion(stream: dict[str, np.ndarray]) -> None:
    # Half of ~1400 rows validate: enough for the paired bootstrap to confirm a real improvement.
    split = time_split(stream["p"], stream["y"], stream["ts"], validation_fraction=0.5)
    candidates = fit_candidates(["temperature", "platt", "isotonic", "histogram", "beta"], split)
    assert all(c.evaluation is not None for c in candidates)
    best = select_best(candidates)
    assert best.rank == min(c.rank for c in candidates if c.rank is not None)
    decision = validation_gate(IdentityCalibrator(), best.calibrator, split.val_confidence, split.val_correct)
    assert decision.promote, decision.reasons
    assert decision.candidate.ece < decision.active.ece / 2
    assert [c.name for c in decision.checks] == [
        "ece_improves",
        "ece_improvement_ci",
        "brier_not_worse",
        "auroc_kept",
    ]
    assert decision.summary() == "promote: every check passed"
    assert all(reason.startswith("PASS") for reason in decision.reasons)


def test_gate_refuses_a_worse_candidate_and_says_why(stream: dict[str, np.ndarray]) -> None:
    split = time_split(stream["p"], stream["y"], stream["ts"])
    good = make("platt").fit(split.fit_confidence, split.fit_correct)
    # A candidate fitted on a shifted, tiny sample: only 8 low-confidence rows, all correct.
    shifted = make("platt").fit(np.linspace(0.3, 0.5, 8), np.ones(8))
    decision = validation_gate(good, shifted, split.val_confidence, split.val_correct)
    assert not decision.promote
    failed = {c.name for c in decision.checks if not c.passed}
    assert "ece_improves" in failed and "ece_improvement_ci" in failed
    assert decision.summary().startswith("reject: failed ece_improves")
    reason = next(r for r in decision.reasons if "ece_improves" in r)
    assert reason.startswith("FAIL ece_improves: ECE ") and "margin" in reason


def test_gate_refuses_a_ranking_destroyer(stream: dict[str, np.ndarray]) -> None:
    split = time_split(stream["p"], stream["y"], stream["ts"])
    active = make("isotonic").fit(split.fit_confidence, split.fit_correct)
    flat = PlattScaling(a=0.0, b=float(np.log(split.fit_correct.mean() / (1 - split.fit_correct.mean()))))
    decision = validation_gate(active, flat, split.val_confidence, split.val_correct)
    assert not decision.promote
    assert "auroc_kept" in {c.name for c in decision.checks if not c.passed}


def test_failed_fits_are_reported_not_raised() -> None:
    split = time_split(np.linspace(0.1, 0.9, 10), np.ones(10), np.arange(10.0))
    candidates = fit_candidates(["platt", "no-such-method"], split)
    assert candidates[0].evaluation is not None
    assert candidates[1].calibrator is None and "unknown calibrator" in (candidates[1].error or "")
    with pytest.raises(ValueError, match="no candidate"):
        select_best([candidates[1]])
