"""Accuracy before the labels arrive: what the calibrated confidences imply, and how sure that is.

If the calibrator fits, a prediction served with confidence ``c`` is right with probability ``c``,
so the window's realised accuracy ``A = mean(y)`` has expectation ``mean(c)`` and, given the
confidences, variance ``sum c(1-c) / N**2`` (a Poisson-binomial mean). The estimate is
``mean(c)`` over *all* predictions, labelled or not, and its interval has two parts:

* sampling: ``z * sqrt(sum c(1-c)) / N``, what a perfect calibrator still leaves to chance;
* bias: the calibrator's measured error on the labelled part, ``b = mean(y - c)``. When it is
  significant (``|b| > z * se(b)``, ``se(b) = sqrt(sum c(1-c)) / N_labelled``), the whole of it
  and its uncertainty, ``|b| + z * se(b)``, is added to both sides and ``check`` says "biased": a
  calibrator that has stopped fitting widens the interval by what it misses, rather than the
  estimate being confidently wrong. Below significance nothing is added (a fitting calibrator's
  noise would only widen the interval past its nominal coverage).

``sum c(1-c)`` over all predictions comes from the fine bins (count and summed confidence per
bin; within a bin ``sum c**2 >= S**2 / n``, off by at most ``n / (4 * fine_bins**2)``); over the
labelled part it is exact (``S1 - S2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monitor.calibration.sketch import CalibrationSketch, Moment

__all__ = ["Z_95", "AccuracyEstimate", "estimate_accuracy", "labelled_bias"]

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class AccuracyEstimate:
    estimate: float  # mean calibrated confidence over every prediction of the window
    lower: float  # clipped to [0, 1]
    upper: float
    sampling: float  # half-width a fitting calibrator leaves to chance
    bias: float | None  # labelled part: accuracy - mean confidence (None: no labels)
    bias_term: float  # |bias| + z * se(bias) when significant, else 0; added to both sides
    check: str  # "ok": no significant bias; "biased": the calibrator misses; "unchecked": no labels

    def with_bias(self, bias: float, bias_se: float, z: float = Z_95) -> AccuracyEstimate:
        """This estimate judged against a bias measured elsewhere (a longer window's labels)."""
        significant = abs(bias) > z * bias_se
        term = abs(bias) + z * bias_se if significant else 0.0
        return AccuracyEstimate(
            self.estimate,
            max(0.0, self.estimate - self.sampling - term),
            min(1.0, self.estimate + self.sampling + term),
            self.sampling,
            bias,
            term,
            "biased" if term > 0 else "ok",
        )


def labelled_bias(sketch: CalibrationSketch) -> tuple[float, float] | None:
    """(mean(y - c), its standard error under calibration) over the labelled predictions."""
    m = sketch.uniform
    n_l = float(m[Moment.N_L].sum())
    if n_l == 0:
        return None
    s1, s2, sy = (float(m[k].sum()) for k in (Moment.S1, Moment.S2, Moment.SY))
    return (sy - s1) / n_l, math.sqrt(max(0.0, s1 - s2)) / n_l


def estimate_accuracy(
    sketch: CalibrationSketch, z: float = Z_95, bias: tuple[float, float] | None = None
) -> AccuracyEstimate | None:
    """The label-free accuracy estimate of a sketch of *calibrated* confidences (None if empty).
    ``bias``: (bias, standard error) measured elsewhere (more labels of the same calibrator);
    default: this sketch's labelled part."""
    m = sketch.uniform
    counts, sums = m[Moment.N], m[Moment.SUM_P]
    n = float(counts.sum())
    if n == 0:
        return None
    filled = counts > 0
    spread = float(np.sum(sums[filled] - sums[filled] ** 2 / counts[filled]))  # sum c(1-c)
    estimate = float(sums.sum()) / n
    sampling = z * math.sqrt(max(0.0, spread)) / n
    bare = AccuracyEstimate(
        estimate,
        max(0.0, estimate - sampling),
        min(1.0, estimate + sampling),
        sampling,
        None,
        0.0,
        "unchecked",
    )
    measured = bias if bias is not None else labelled_bias(sketch)
    return bare if measured is None else bare.with_bias(*measured, z=z)
