"""Calibration metrics on raw arrays of top-label confidences and correctness.

Binning convention everywhere (also in the sketch): ``n_bins`` equal-width bins with edges
``numpy.linspace(0, 1, n_bins + 1)``, right-closed ``(lo, hi]``, the first bin also holding 0 — the
convention of scikit-learn's ``calibration_curve`` and Guo et al. (2017). A confidence equal to an
edge belongs to the bin below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr
from scipy.stats import rankdata

__all__ = [
    "EPS",
    "BinStats",
    "FloatArray",
    "IntArray",
    "ReliabilityTable",
    "Strategy",
    "auroc",
    "bias_corrected_interval",
    "bin_edges",
    "bin_index",
    "bin_stats",
    "binned_gap",
    "brier_score",
    "classwise_ece",
    "debiased_calibration_error",
    "debiased_from_bins",
    "ece_bootstrap_ci",
    "ece_from_bins",
    "ece_from_gap",
    "expected_calibration_error",
    "log_likelihood",
    "maximum_calibration_error",
    "mce_from_bins",
    "negative_log_likelihood",
    "quantile_edges",
    "reliability_table",
    "rms_calibration_error",
    "rms_from_bins",
    "spiegelhalter_from_sums",
    "spiegelhalter_z",
    "table_from_bins",
    "validate",
]


Strategy = Literal["uniform", "quantile"]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]

# Probabilities are clipped to [EPS, 1 - EPS] for log-likelihoods only (NLL, logits of 0 and 1).
EPS = 1e-15


def validate(confidence: ArrayLike, correct: ArrayLike | None = None) -> tuple[FloatArray, FloatArray]:
    """1-D float arrays ``(p, y)``; ``y`` 0/1. Raises ValueError naming what is wrong."""
    p = np.asarray(confidence, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"confidence must be 1-D, got shape {p.shape}")
    if p.size == 0:
        raise ValueError("confidence is empty")
    low, high = p.min(), p.max()  # NaN propagates into both: one check covers range and NaN
    if not (low >= 0.0 and high <= 1.0):
        bad = int(np.sum(~np.isfinite(p)))
        if bad:
            raise ValueError(f"confidence holds {bad} NaN or infinite values")
        raise ValueError(f"confidence must lie in [0, 1]; got range [{low}, {high}]")
    if correct is None:
        return p, np.empty(0)
    y_raw = np.asarray(correct)
    if y_raw.shape != p.shape:
        raise ValueError(f"correct has shape {y_raw.shape}, confidence {p.shape}")
    if y_raw.dtype == np.bool_:
        return p, y_raw.view(np.uint8)  # 0/1 by construction; zero-copy
    y = y_raw.astype(np.float64)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("correct must hold only 0/1 or booleans")
    return p, y


def bin_edges(n_bins: int) -> FloatArray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.linspace(0.0, 1.0, n_bins + 1)


# A value whose p * n_bins lies this close to an integer may sit on an edge: it is binned exactly.
_EDGE_TOLERANCE = 1e-9


def bin_index(p: FloatArray, n_bins: int) -> IntArray:
    """Bin of each confidence: ``(lo, hi]`` bins, 0 in the first — exactly scikit-learn's rule
    (``searchsorted`` on ``linspace`` edges), including values on an edge such as 0.7 of 10 bins.

    A binary search per value is slow (0.21 s for 10M); ``floor(p * n)`` is fast but rounds the
    wrong way for values on or within rounding of an edge (``0.7 * 10 = 7.000000000000001``). So the
    floor is taken for all, and only values whose ``p * n`` is within 1e-9 of an integer are
    re-binned with ``searchsorted``.
    """
    x = p * n_bins
    whole = np.floor(x)
    index = whole.astype(np.intp)
    x -= whole  # fractional part in [0, 1)
    x -= 0.5
    np.abs(x, out=x)
    near = np.flatnonzero(x > 0.5 - _EDGE_TOLERANCE)
    if near.size:
        index[near] = np.searchsorted(bin_edges(n_bins)[1:-1], p[near], side="left")
    return index


def quantile_edges(p: FloatArray, n_bins: int) -> FloatArray:
    """Equal-mass edges, as scikit-learn's ``calibration_curve(strategy="quantile")``."""
    return np.asarray(np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100), dtype=np.float64)


@dataclass(frozen=True)
class BinStats:
    """Per-bin sums: the common input of every binned metric."""

    edges: FloatArray
    count: FloatArray
    sum_confidence: FloatArray
    sum_correct: FloatArray

    @property
    def total(self) -> float:
        return float(self.count.sum())

    def mean_confidence(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum_confidence / self.count, np.nan)

    def accuracy(self) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum_correct / self.count, np.nan)

    def gaps(self) -> FloatArray:
        """|accuracy - confidence| per bin (0 for empty bins, which carry no weight)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.abs(self.sum_correct - self.sum_confidence) / self.count
        return np.where(self.count > 0, gap, 0.0)


def bin_stats(p: FloatArray, y: FloatArray, n_bins: int, strategy: Strategy = "uniform") -> BinStats:
    if strategy == "uniform":
        edges = bin_edges(n_bins)
        index = bin_index(p, n_bins)
    elif strategy == "quantile":
        edges = quantile_edges(p, n_bins)
        index = np.searchsorted(edges[1:-1], p, side="left").astype(np.intp)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    size = len(edges) - 1
    return BinStats(
        edges=edges,
        count=np.bincount(index, minlength=size).astype(np.float64),
        sum_confidence=np.bincount(index, weights=p, minlength=size).astype(np.float64),
        sum_correct=np.bincount(index, weights=y, minlength=size).astype(np.float64),
    )


def binned_gap(index: IntArray, p: FloatArray, y: FloatArray, n_bins: int) -> FloatArray:
    """Per bin, sum y - sum p: the signed calibration gap, weighted by the bin's count.

    The one formula behind every ECE here: ``sum_b n_b |acc_b - conf_b| = sum_b |sum y - sum p|``,
    with no division, so empty bins contribute 0.
    """
    return np.asarray(
        np.bincount(index, weights=y, minlength=n_bins) - np.bincount(index, weights=p, minlength=n_bins),
        dtype=np.float64,
    )


def ece_from_gap(gap: FloatArray, total: float) -> FloatArray:
    """ECE from signed per-bin gaps (``binned_gap``; bins on the last axis) over ``total`` samples:
    a 0-d array for one gap vector, one value per row for a matrix of bootstrap draws."""
    return np.asarray(np.abs(gap).sum(axis=-1) / total, dtype=np.float64)


def ece_from_bins(stats: BinStats) -> float:
    return float(ece_from_gap(stats.sum_correct - stats.sum_confidence, stats.total))


def mce_from_bins(stats: BinStats) -> float:
    return float(np.max(stats.gaps()[stats.count > 0]))


def rms_from_bins(stats: BinStats) -> float:
    return float(np.sqrt(np.sum(stats.count * stats.gaps() ** 2) / stats.total))


def debiased_from_bins(stats: BinStats, squared: bool = False) -> float:
    """Kumar, Liang & Ma (2019): per bin, (conf - acc)^2 minus acc(1 - acc)/(n - 1), the estimator's
    own sampling variance; bins with fewer than 2 samples contribute 0. Clipped at 0 before sqrt."""
    n = stats.count
    usable = n >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = stats.sum_correct / n
        conf = stats.sum_confidence / n
        term = (conf - acc) ** 2 - acc * (1.0 - acc) / (n - 1.0)
    estimate = float(np.sum(np.where(usable, n * term, 0.0)) / stats.total)
    return estimate if squared else float(np.sqrt(max(estimate, 0.0)))


def expected_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over ``(lo, hi]`` bins (0 in the first)."""
    p, y = validate(confidence, correct)
    if strategy == "uniform":  # hot path: no per-bin counts needed
        return float(ece_from_gap(binned_gap(bin_index(p, n_bins), p, y, n_bins), p.size))
    return ece_from_bins(bin_stats(p, y, n_bins, strategy))


def maximum_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """MCE = max over non-empty ``(lo, hi]`` bins of |acc_b - conf_b|."""
    p, y = validate(confidence, correct)
    return mce_from_bins(bin_stats(p, y, n_bins, strategy))


def rms_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> float:
    """RMS-CE = sqrt(sum_b (n_b / N) (acc_b - conf_b)^2) over ``(lo, hi]`` bins."""
    p, y = validate(confidence, correct)
    return rms_from_bins(bin_stats(p, y, n_bins, strategy))


def debiased_calibration_error(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    squared: bool = False,
) -> float:
    """Debiased L2 calibration error (Kumar et al. 2019) over ``(lo, hi]`` bins; see debiased_from_bins."""
    p, y = validate(confidence, correct)
    return debiased_from_bins(bin_stats(p, y, n_bins, strategy), squared)


def brier_score(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared difference between confidence and correctness (top-label Brier)."""
    p, y = validate(confidence, correct)
    return float(np.mean((p - y) ** 2))


def log_likelihood(p: FloatArray, y: FloatArray) -> FloatArray:
    """Per-sample Bernoulli log-likelihood with p clipped to [EPS, 1 - EPS]."""
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.asarray(y * np.log(q) + (1.0 - y) * np.log1p(-q), dtype=np.float64)


def negative_log_likelihood(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Mean Bernoulli NLL of correctness under the confidence (clipped to [1e-15, 1 - 1e-15])."""
    p, y = validate(confidence, correct)
    return float(-np.mean(log_likelihood(p, y)))


@dataclass(frozen=True)
class ReliabilityTable:
    """A reliability diagram: per ``(lo, hi]`` bin its edges, count, mean confidence and accuracy."""

    lower: FloatArray
    upper: FloatArray
    count: FloatArray
    mean_confidence: FloatArray  # NaN for empty bins
    accuracy: FloatArray  # NaN for empty bins

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "bin": i,
                "lower": float(self.lower[i]),
                "upper": float(self.upper[i]),
                "count": int(self.count[i]),
                "mean_confidence": None
                if np.isnan(self.mean_confidence[i])
                else float(self.mean_confidence[i]),
                "accuracy": None if np.isnan(self.accuracy[i]) else float(self.accuracy[i]),
            }
            for i in range(len(self.count))
        ]


def table_from_bins(stats: BinStats) -> ReliabilityTable:
    return ReliabilityTable(
        lower=stats.edges[:-1],
        upper=stats.edges[1:],
        count=stats.count,
        mean_confidence=stats.mean_confidence(),
        accuracy=stats.accuracy(),
    )


def reliability_table(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15, strategy: Strategy = "uniform"
) -> ReliabilityTable:
    """Per ``(lo, hi]`` bin: edges, count, mean confidence, accuracy (the reliability diagram)."""
    p, y = validate(confidence, correct)
    return table_from_bins(bin_stats(p, y, n_bins, strategy))


def spiegelhalter_from_sums(
    n: float, s1: float, s2: float, s3: float, s4: float, sy: float, syp: float
) -> tuple[float, float]:
    """Spiegelhalter's Z from moments: numerator sum (y - p)(1 - 2p), variance sum (1 - 2p)^2 p (1 - p)."""
    numerator = sy - 2.0 * syp - s1 + 2.0 * s2
    variance = s1 - 5.0 * s2 + 8.0 * s3 - 4.0 * s4
    # The moment form cancels terms: treat rounding-level variance as the degenerate case (every
    # confidence 0, 1/2 or 1) that the direct form reports as exactly 0.
    if n == 0 or variance <= 1e-12 * max(1.0, s1):
        return float("nan"), float("nan")
    z = numerator / np.sqrt(variance)
    return float(z), float(2.0 * ndtr(-abs(z)))


def spiegelhalter_z(confidence: ArrayLike, correct: ArrayLike) -> tuple[float, float]:
    """Spiegelhalter (1986) Z test of calibration and its two-sided p-value.

    Z = sum (y - p)(1 - 2p) / sqrt(sum (1 - 2p)^2 p (1 - p)). Under perfect calibration Z ~ N(0, 1).
    Returns (nan, nan) when the variance is 0 (every confidence is 0, 1/2 or 1).
    """
    p, y = validate(confidence, correct)
    numerator = float(np.sum((y - p) * (1.0 - 2.0 * p)))
    variance = float(np.sum((1.0 - 2.0 * p) ** 2 * p * (1.0 - p)))
    if variance <= 0.0:
        return float("nan"), float("nan")
    z = numerator / np.sqrt(variance)
    return float(z), float(2.0 * ndtr(-abs(z)))


def ece_bootstrap_ci(
    confidence: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    level: float = 0.95,
    n_boot: int = 1000,
    strategy: Strategy = "uniform",
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Bias-corrected bootstrap CI of the ECE, resampling (confidence, correct) pairs.

    The plug-in ECE is biased upwards on small samples, and its bootstrap distribution more so: a
    plain percentile interval can lie entirely above the estimate (seen with 430 labels), which
    would make a drift rule on the lower bound fire on well-calibrated models. The percentile
    interval is therefore shifted by the bootstrap estimate of the bias, mean(boot) - ECE, and
    clipped at 0 (see ``bias_corrected_interval``).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    p, y = validate(confidence, correct)
    rng = np.random.default_rng(seed)
    n = p.size
    values = np.empty(n_boot)
    if strategy == "uniform":
        # Bins do not depend on the resample: bin once, then ECE = sum_b |S_y - S_p| / N per draw.
        index = bin_index(p, n_bins)
        for b in range(n_boot):
            pick = rng.integers(0, n, n)
            values[b] = float(ece_from_gap(binned_gap(index[pick], p[pick], y[pick], n_bins), n))
    else:
        for b in range(n_boot):
            pick = rng.integers(0, n, n)
            values[b] = ece_from_bins(bin_stats(p[pick], y[pick], n_bins, strategy))
    return bias_corrected_interval(values, expected_calibration_error(p, y, n_bins, strategy), level)


def bias_corrected_interval(boot: FloatArray, estimate: float, level: float) -> tuple[float, float]:
    """Percentile interval of ``boot`` shifted by the bootstrap bias estimate, clipped at 0."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    bias = float(np.mean(boot)) - estimate
    return max(0.0, float(low) - bias), max(0.0, float(high) - bias)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): the mean over classes k of ECE(probs[:, k], labels == k)."""
    matrix = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"probs must be (n_samples, n_classes >= 2), got shape {matrix.shape}")
    if y.shape != (matrix.shape[0],):
        raise ValueError(f"labels must have shape ({matrix.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= matrix.shape[1]:
        raise ValueError(f"labels must be integers in [0, {matrix.shape[1] - 1}]")
    return float(
        np.mean([expected_calibration_error(matrix[:, k], y == k, n_bins) for k in range(matrix.shape[1])])
    )


def auroc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the ROC curve of confidence as a predictor of correctness (ties count half).

    NaN when only one class is present (the ranking is undefined).
    """
    p, y = validate(confidence, correct)
    positives = float(y.sum())
    negatives = float(y.size - positives)
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(p)  # average ranks: ties count half
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
