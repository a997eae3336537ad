"""Calibration-core benchmark, in one run:

* ECE on 10M confidences vs a plain numpy bincount reference (floor binning, no validation);
* a CalibrationSketch from 10M values, and a merge of 10k sketches;
* temperature fit on 1M x 10 logits vs scikit-learn's temperature method;
* isotonic and Platt fits on 1M scores.

Run: `make bench` (or `python benchmarks/calibration.py --out benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.calibration.calibrators import IsotonicCalibration, PlattScaling, TemperatureScaling  # noqa: E402
from monitor.calibration.metrics import expected_calibration_error  # noqa: E402
from monitor.calibration.sketch import CalibrationSketch  # noqa: E402


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """The plain version anyone would write: floor binning, two weighted bincounts, no checks."""
    index = np.minimum((p * n_bins).astype(np.intp), n_bins - 1)
    gap = np.bincount(index, weights=y, minlength=n_bins) - np.bincount(index, weights=p, minlength=n_bins)
    return float(np.abs(gap).sum() / p.size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str]] = []

    n = 10_000_000
    p = rng.random(n)
    y = rng.random(n) < p**1.3
    ours = best_of(lambda: expected_calibration_error(p, y), args.repeat)
    ref = best_of(lambda: reference_ece(p, y), args.repeat)
    rows.append(
        (
            "ECE, 10M confidences, 15 bins",
            f"{ours * 1000:.0f} ms",
            f"reference {ref * 1000:.0f} ms; ratio {ours / ref:.2f} (target <= 1.5)",
        )
    )

    build = best_of(lambda: CalibrationSketch.from_arrays(p, y), max(1, args.repeat // 2))
    rows.append(
        ("CalibrationSketch from 10M labelled values", f"{build * 1000:.0f} ms", "120 fine bins, all moments")
    )
    parts = [CalibrationSketch.from_arrays(rng.random(100), rng.random(100) < 0.5) for _ in range(10_000)]
    merge = best_of(lambda: CalibrationSketch.merge_all(parts), args.repeat)
    merged = CalibrationSketch.merge_all(parts)
    metrics = best_of(lambda: merged.metrics(), args.repeat)
    rows.append(
        ("merge of 10k sketches", f"{merge * 1000:.0f} ms", f"then every metric: {metrics * 1000:.2f} ms")
    )

    m, k = 1_000_000, 10
    logits = rng.normal(0, 3, size=(m, k))
    true_probs = np.exp(logits / 2.0)
    true_probs /= true_probs.sum(axis=1, keepdims=True)
    labels = (true_probs.cumsum(axis=1) > rng.random((m, 1))).argmax(axis=1)
    ours_t = best_of(lambda: TemperatureScaling().fit_logits(logits, labels), 3)
    fitted = TemperatureScaling().fit_logits(logits, labels)
    from sklearn.calibration import _TemperatureScaling  # the estimator behind method="temperature"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_t = best_of(lambda: _TemperatureScaling().fit(logits, labels), 3)
        sk_T = 1.0 / float(_TemperatureScaling().fit(logits, labels).beta_)
    rows.append(
        (
            "temperature fit, 1M x 10 logits",
            f"{ours_t * 1000:.0f} ms",
            f"scikit-learn {sk_t * 1000:.0f} ms (ratio {ours_t / sk_t:.2f}, target <= 1); "
            f"T = {fitted.temperature:.5f} vs {sk_T:.5f} (true 2.0)",
        )
    )

    scores = rng.random(1_000_000)
    outcome = rng.random(1_000_000) < scores**2
    iso = best_of(lambda: IsotonicCalibration().fit(scores, outcome), 3)
    platt = best_of(lambda: PlattScaling().fit(scores, outcome), 3)
    rows.append(("isotonic fit, 1M scores", f"{iso * 1000:.0f} ms", ""))
    rows.append(("Platt fit, 1M scores", f"{platt * 1000:.0f} ms", ""))

    table = ["| what | time (best of runs) | comparison |", "|---|---:|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    header = f"### Calibration core ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}\n\n"
    report = header + "\n".join(table)
    print(report)
    if args.out:
        write_section(args.out, "calibration", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
