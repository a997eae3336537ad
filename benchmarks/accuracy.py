"""Label-free accuracy estimate: does its 95% interval cover the realised accuracy, and is it honest
when the calibrator has stopped fitting? (``monitor/calibration/estimate.py``)

Each window is a sketch of served (calibrated) confidences, some of them labelled (labels are late);
the realised accuracy is that of *every* prediction of the window, labels arrived or not. Side by
side, on the same windows:

* **point only**: the mean served confidence, no interval (what a confidence-based performance
  estimator reports); judged by its absolute error;
* **sampling only**: the mean with the interval a fitting calibrator leaves to chance;
* **calmon**: sampling plus the calibrator's significant bias on the labelled part ("biased" flag).

Streams: simulated (a fitting calibrator; a calibrator that stopped fitting: served 0.2 above the
truth), and scikit-learn's bundled digits: a Gaussian naive Bayes (badly overconfident) calibrated by
calmon's isotonic calibrator on one split, windows drawn from the held-out split; then the same
calibrator on digits whose bottom two pixel rows are cut off (the model got worse, its confidences
did not say so). calmon measures the calibrator's bias on the labels of the series' most-labelled
window (``long``), as ``evaluation.windows.measure_bias`` does; the newest window has none yet.

Run: `python benchmarks/accuracy.py --out benchmarks/RESULTS.md` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.calibration.calibrators import IsotonicCalibration  # noqa: E402
from monitor.calibration.estimate import estimate_accuracy, labelled_bias  # noqa: E402
from monitor.calibration.sketch import CalibrationSketch  # noqa: E402

Window = tuple[np.ndarray, np.ndarray, np.ndarray]  # served confidence, correct, labelled


Long = tuple[np.ndarray, np.ndarray] | Callable[[], tuple[np.ndarray, np.ndarray]] | None


def judge(windows: Iterator[Window], long: Long) -> dict[str, float]:
    """``long``: the labels of the series' most-labelled window (served confidence, correct), on
    which calmon measures the calibrator's bias, as ``evaluation.windows.measure_bias`` does; a
    callable draws a new one for every window."""
    fixed = labelled_bias(CalibrationSketch().add(*long)) if isinstance(long, tuple) else None
    point_err, sampling_cover, calmon_cover, widths, flagged, n = [], 0, 0, [], 0, 0
    for c, y, labelled in windows:
        sketch = CalibrationSketch().add_predictions(c)
        if labelled.any():
            sketch.add_labelled(c[labelled], y[labelled])
        bias = labelled_bias(CalibrationSketch().add(*long())) if callable(long) else fixed
        est = estimate_accuracy(sketch, bias=bias)
        assert est is not None
        realised = float(y.mean())
        point_err.append(abs(est.estimate - realised))
        sampling_cover += est.estimate - est.sampling <= realised <= est.estimate + est.sampling
        calmon_cover += est.lower <= realised <= est.upper
        widths.append(est.upper - est.lower)
        flagged += est.check == "biased"
        n += 1
    return {
        "windows": n,
        "point_mae": float(np.mean(point_err)),
        "sampling_coverage": sampling_cover / n,
        "calmon_coverage": calmon_cover / n,
        "calmon_width": float(np.mean(widths)),
        "flagged": flagged / n,
    }


def simulated(n_windows: int, size: int, share: float, shift: float, seed: int) -> Iterator[Window]:
    rng = np.random.default_rng(seed)
    for _ in range(n_windows):
        c = rng.beta(5, 2, size)
        y = rng.random(size) < np.clip(c - shift, 0, 1)
        yield c, y, rng.random(size) < share


def labelled_sample(size: int, shift: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c = rng.beta(5, 2, size)
    return c, rng.random(size) < np.clip(c - shift, 0, 1)


def digits(occluded_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Served confidence and correctness on held-out digits: GaussianNB calibrated by calmon's isotonic
    calibrator on a separate split; the bottom ``occluded_rows`` of the 8x8 held-out images are
    blanked (a scanner that cuts digits off: the model gets worse, its confidence does not say so)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB

    X, y = load_digits(return_X_y=True)
    X_fit, X_rest, y_fit, y_rest = train_test_split(X, y, train_size=0.4, random_state=seed, stratify=y)
    X_cal, X_test, y_cal, y_test = train_test_split(X_rest, y_rest, train_size=0.4, random_state=seed)
    model = GaussianNB().fit(X_fit, y_fit)
    proba = model.predict_proba(X_cal)
    calibrator = IsotonicCalibration().fit(proba.max(1), proba.argmax(1) == y_cal)
    shifted = X_test.copy()
    if occluded_rows:
        shifted[:, 64 - 8 * occluded_rows :] = 0.0
    test = model.predict_proba(shifted)
    return calibrator.transform(test.max(1)), test.argmax(1) == y_test


def resampled(
    c: np.ndarray, y: np.ndarray, n_windows: int, size: int, share: float, seed: int
) -> Iterator[Window]:
    rng = np.random.default_rng(seed)
    for _ in range(n_windows):
        pick = rng.choice(c.size, size, replace=False)
        yield c[pick], y[pick], rng.random(size) < share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[tuple[str, dict[str, Any]]] = []
    Case = tuple[str, Callable[[], Iterator[Window]], Long]
    cases: list[Case] = []
    rng = np.random.default_rng(9)

    def fit_long() -> tuple[np.ndarray, np.ndarray]:
        return labelled_sample(3000, 0.0, rng)

    def broken_long() -> tuple[np.ndarray, np.ndarray]:
        return labelled_sample(3000, 0.2, rng)

    cases.append(
        (
            "simulated, calibrator fits, no labels anywhere",
            lambda: simulated(args.windows, 1000, 0.0, 0.0, 1),
            None,
        )
    )
    for share in (0.0, 0.2):
        cases.append(
            (
                f"simulated, calibrator fits, window {share:.0%} labelled, 3000 labels in the long window",
                lambda s=share: simulated(args.windows, 1000, s, 0.0, 1),
                fit_long,
            )
        )
    cases.append(
        (
            "simulated, calibrator fits, 200 per window",
            lambda: simulated(args.windows, 200, 0.0, 0.0, 2),
            fit_long,
        )
    )
    cases.append(
        (
            "simulated, calibrator broken (served 0.2 too high) since before the long window",
            lambda: simulated(args.windows, 1000, 0.0, 0.2, 3),
            broken_long,
        )
    )
    cases.append(
        (
            "simulated, calibrator broken in the newest window only (its labels not arrived)",
            lambda: simulated(args.windows, 1000, 0.0, 0.2, 3),
            fit_long,
        )
    )
    c, y = digits(occluded_rows=0)
    cases.append(
        (
            f"digits: isotonic-calibrated GaussianNB, windows of 300 of {c.size} held-out rows, "
            "long window = all of them labelled",
            lambda: resampled(c, y, args.windows, 300, 0.0, 4),
            (c, y),
        )
    )
    cases.append(
        ("digits, same, no labels anywhere", lambda: resampled(c, y, args.windows, 300, 0.0, 4), None)
    )
    c_noisy, y_noisy = digits(occluded_rows=2)
    cases.append(
        (
            "digits, bottom 2 pixel rows cut off (model worse, calibrator unaware), long window cut too",
            lambda: resampled(c_noisy, y_noisy, args.windows, 300, 0.0, 5),
            (c_noisy, y_noisy),
        )
    )
    cases.append(
        (
            "digits, cut off in the newest window only (its labels not arrived)",
            lambda: resampled(c_noisy, y_noisy, args.windows, 300, 0.0, 5),
            (c, y),
        )
    )
    for name, make, long in cases:
        rows.append((name, judge(make(), long)))
    lines = [
        f"{args.windows:,} windows per stream; nominal coverage 95%.",
        "",
        "| stream | point only: mean abs error | sampling only: coverage | calmon: coverage "
        "| calmon: mean width | flagged biased |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['point_mae']:.4f} | {r['sampling_coverage']:.1%} | {r['calmon_coverage']:.1%} "
            f"| {r['calmon_width']:.3f} | {r['flagged']:.1%} |"
        )
    lines += [
        "",
        f"digits held out: served confidence {c.mean():.3f}, realised accuracy {y.mean():.3f}; cut off: "
        f"served {c_noisy.mean():.3f}, realised {y_noisy.mean():.3f}.",
        f"Run time {time.perf_counter() - started:.0f} s.",
    ]
    header = f"### Estimated accuracy ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}\n\n"
    report = header + "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, "accuracy", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
