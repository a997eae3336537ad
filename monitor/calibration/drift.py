"""Distribution shift between two confidence histograms over the same bins.

All statistics take bin counts (e.g. ``CalibrationSketch.histogram()``), so they work from sketches
without raw rows. ``expected`` is the reference (e.g. the previous period), ``actual`` the current.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import jensenshannon

from monitor.calibration.metrics import FloatArray

__all__ = [
    "PSI_EPSILON",
    "js_distance",
    "ks_statistic",
    "psi",
    "wasserstein",
]


# PSI is undefined for an empty bin (log 0). Empty-bin proportions are raised to this floor and the
# histogram renormalised; 1e-4 is the customary choice and bounds one empty bin's term to ~1e-3..1.
PSI_EPSILON = 1e-4


def _proportions(counts: ArrayLike, name: str) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of bin counts")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError(f"{name} counts must be finite and >= 0")
    total = c.sum()
    if total <= 0:
        raise ValueError(f"{name} holds no observations")
    return np.asarray(c / total, dtype=np.float64)


def _pair(expected: ArrayLike, actual: ArrayLike) -> tuple[FloatArray, FloatArray]:
    e = _proportions(expected, "expected")
    a = _proportions(actual, "actual")
    if e.shape != a.shape:
        raise ValueError(f"histograms differ in bins: {e.size} vs {a.size}")
    return e, a


def psi(expected: ArrayLike, actual: ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index: sum (a - e) ln(a / e), with empty bins floored at ``epsilon``."""
    e, a = _pair(expected, actual)
    e = np.maximum(e, epsilon)
    a = np.maximum(a, epsilon)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(expected: ArrayLike, actual: ArrayLike) -> float:
    """Kolmogorov-Smirnov statistic at bin resolution: max |CDF_e - CDF_a| over bin edges."""
    e, a = _pair(expected, actual)
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a))))


def js_distance(expected: ArrayLike, actual: ArrayLike) -> float:
    """Jensen-Shannon distance (base 2, so in [0, 1]): the square root of the JS divergence."""
    e, a = _pair(expected, actual)
    return float(jensenshannon(e, a, base=2.0))


def wasserstein(expected: ArrayLike, actual: ArrayLike) -> float:
    """Earth mover's distance on [0, 1] with each bin's mass at its centre: sum |CDF_e - CDF_a| * width."""
    e, a = _pair(expected, actual)
    width = 1.0 / e.size
    return float(np.sum(np.abs(np.cumsum(e) - np.cumsum(a))[:-1]) * width)
