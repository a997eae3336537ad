"""Threshold advice (``monitor/calibration/advice.py``): does the advised threshold keep its promise
on held-out traffic, and how much coverage does the guarantee cost against hindsight?

Per stream and target: a labelled sample (what calmon has), the advice, then 300,000 held-out
predictions of the same distribution: the realised precision of the accepted ones (meets the target
or not) and their share (coverage). Repeated; side by side with the naive rule "the lowest threshold
whose 95% lower bound passes", which scans every threshold and so has no guarantee, and with the best
threshold chosen with hindsight on the held-out traffic itself (any threshold, not only bin edges).
A third column reads the same sketch without its tail (uniform 1/120 edges only): what the finer
edges above 0.95 buy.

Run: `python benchmarks/advice.py --out benchmarks/RESULTS.md` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import machine, write_section  # noqa: E402
from monitor.calibration.advice import advise, risk_coverage  # noqa: E402
from monitor.calibration.sketch import CalibrationSketch  # noqa: E402

STREAMS = {
    "classifier-like, Beta(5, 2)": (5.0, 2.0),
    "LLM-like, confident, Beta(12, 1.5)": (12.0, 1.5),
    "LLM-like, very confident, Beta(20, 0.5)": (20.0, 0.5),
}


def hindsight(c: np.ndarray, y: np.ndarray, target: float) -> float:
    """The largest share of traffic any threshold accepts with precision >= target (on this traffic)."""
    order = np.argsort(-c, kind="stable")
    precision = np.cumsum(y[order]) / np.arange(1, c.size + 1)
    reaching = np.flatnonzero(precision >= target)
    return float((reaching[-1] + 1) / c.size) if reaching.size else 0.0


def without_tail(sketch: CalibrationSketch) -> CalibrationSketch:
    uniform = CalibrationSketch(sketch.fine_bins, sketch.moments.copy())
    uniform.tail[:] = 0  # advice falls back to the uniform edges
    return uniform


def naive(sketch: CalibrationSketch, target: float) -> float | None:
    passing = [
        p.threshold
        for p in risk_coverage(sketch)
        if p.precision_lower is not None and p.precision_lower >= target
    ]
    return min(passing) if passing else None


def run(a: float, b: float, target: float, labelled: int, reps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    held_c = rng.beta(a, b, 300_000)
    held_y = rng.random(held_c.size) < held_c
    results = {"advice": [0, []], "naive": [0, []], "uniform": [0, []]}  # type: ignore[var-annotated]
    for _ in range(reps):
        c = rng.beta(a, b, labelled)
        sketch = CalibrationSketch().add(c, rng.random(c.size) < c)
        for name, threshold in (
            ("advice", advise(sketch, target).threshold),
            ("naive", naive(sketch, target)),
            ("uniform", advise(without_tail(sketch), target).threshold),
        ):
            if threshold is None:
                results[name][0] += 1
                results[name][1].append(0.0)
                continue
            accepted = held_c >= threshold
            results[name][0] += bool(held_y[accepted].mean() >= target)
            results[name][1].append(float(accepted.mean()))
    return {
        "met": results["advice"][0] / reps,
        "coverage": float(np.mean(results["advice"][1])),
        "naive_met": results["naive"][0] / reps,
        "naive_coverage": float(np.mean(results["naive"][1])),
        "uniform_coverage": float(np.mean(results["uniform"][1])),
        "hindsight": hindsight(held_c, held_y, target),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    lines = [
        f"{args.reps} repetitions per row; guarantee: the target is met with probability >= 95%.",
        "",
        "| stream | target | labels | advice: target met | advice: coverage | naive scan: target met "
        "| naive scan: coverage | advice on uniform edges only: coverage | hindsight coverage |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seed = 0
    for name, (a, b) in STREAMS.items():
        for target in (0.9, 0.95, 0.99):
            for labelled in (5_000, 50_000):
                seed += 1
                r = run(a, b, target, labelled, args.reps, seed)
                lines.append(
                    f"| {name} | {target} | {labelled:,} | {r['met']:.1%} | {r['coverage']:.3f} | "
                    f"{r['naive_met']:.1%} | {r['naive_coverage']:.3f} | {r['uniform_coverage']:.3f} | "
                    f"{r['hindsight']:.3f} |"
                )
    lines.append(f"\nRun time {time.perf_counter() - started:.0f} s.")
    header = f"### Threshold advice ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}\n\n"
    report = header + "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, "advice", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
