"""Calibrators: maps from a raw top-label confidence (or logits) to a calibrated one.

One interface: ``fit(confidence, correct)``, ``transform(confidence)``, ``to_dict()`` /
``from_dict()`` (plain JSON, never pickle) and ``method``. Every map on scalar scores is
non-decreasing, so calibration never reorders predictions (beyond creating ties).

Edge cases, the same for every method:
* Confidences of exactly 0 or 1 are clipped to [2^-53, 1 - 2^-53] (the float64 neighbours inside
  (0, 1)) where a logit is taken, so distinct inputs stay distinct: a coarser clip merged
  GaussianNB confidences like 1 - 1e-14 and 1.0 and cost ranking (AUROC) on real data.
* Fitting needs at least one sample; with very few samples or a single class the fit is
  still defined: parametric fits are regularised (bounded parameters, Platt's prior-corrected
  targets) and non-parametric ones never output exactly 0 or 1 (a finite sample cannot justify
  certainty): outputs stay within [1/(n+2), (n+1)/(n+2)].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import expit, log_expit, softmax

from monitor.calibration.metrics import FloatArray, validate

__all__ = [
    "CALIBRATORS",
    "CLIP",
    "LOGIT_BETA_BOUNDS",
    "SCALAR_BETA_BOUNDS",
    "BetaCalibration",
    "Calibrator",
    "HistogramBinning",
    "IdentityCalibrator",
    "IsotonicCalibration",
    "PlattScaling",
    "TemperatureScaling",
    "calibrate_rows",
    "from_dict",
    "make",
]


CLIP = 2.0**-53
# Inverse-temperature bounds. Scalar mode works on logits of probabilities (|z| <= 27.6), where
# T in [0.02, 50] spans every useful map; raw multi-class logits can be on any scale, so that mode
# allows log(beta) in [-10, 10] like scikit-learn.
SCALAR_BETA_BOUNDS = (0.02, 50.0)
LOGIT_BETA_BOUNDS = (float(np.exp(-10.0)), float(np.exp(10.0)))


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, CLIP, 1.0 - CLIP)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def _fit_inputs(confidence: ArrayLike, correct: ArrayLike) -> tuple[FloatArray, FloatArray]:
    p, y = validate(confidence, correct)
    return p, y


class Calibrator(ABC):
    method: ClassVar[str]

    @abstractmethod
    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> Calibrator:
        """Fit on raw top-label confidences and 0/1 correctness."""

    @abstractmethod
    def transform(self, confidence: ArrayLike) -> FloatArray:
        """Calibrated confidences, same shape, non-decreasing in the input."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Calibrator: ...

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


class IdentityCalibrator(Calibrator):
    method = "identity"

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> IdentityCalibrator:
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        return p.copy()

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IdentityCalibrator:
        return cls()


class TemperatureScaling(Calibrator):
    """Temperature scaling (Guo et al. 2017), in two modes.

    * ``scalar``: on the logit of a top-label confidence, ``sigmoid(logit(p) / T)``; fitted by
      maximum likelihood of correctness on Platt's prior-corrected targets (so a single-class or
      tiny sample cannot drive T to an extreme). Used when only confidences are stored.
    * ``logits``: on full multi-class logits, ``max softmax(z / T)``; fitted by maximum likelihood
      of the true class (``fit_logits``), applied with ``transform_logits``.

    The optimiser is Newton's method on the inverse temperature (the NLL is convex in it), bounded
    to T in [0.02, 50].
    """

    method = "temperature"

    def __init__(self, temperature: float = 1.0, mode: str = "scalar"):
        if mode not in ("scalar", "logits"):
            raise ValueError(f"mode must be 'scalar' or 'logits', got {mode!r}")
        self.temperature = float(temperature)
        self.mode = mode

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> TemperatureScaling:
        p, y = _fit_inputs(confidence, correct)
        z = _logit(p)
        t = _platt_targets(y)

        def derivatives(beta: float) -> tuple[float, float, float]:
            s = expit(beta * z)
            value = -float(np.sum(t * log_expit(beta * z) + (1.0 - t) * log_expit(-beta * z)))
            return value, float(np.sum((s - t) * z)), float(np.sum(s * (1.0 - s) * z * z))

        self.temperature = 1.0 / _newton_1d(derivatives, SCALAR_BETA_BOUNDS)
        self.mode = "scalar"
        return self

    def fit_logits(self, logits: ArrayLike, labels: ArrayLike) -> TemperatureScaling:
        """Fit on (n_samples, n_classes) logits and integer true labels."""
        z, labels_ = _check_logits(logits, labels)
        # Centre each row on its maximum once: max(beta z) = beta max(z) for beta > 0, so every
        # evaluation is one multiply, one exp, one row sum and two dot products into one buffer.
        centred = z - z.max(axis=1, keepdims=True)
        centred_sq = centred * centred
        true_gap = float(np.sum(centred[np.arange(z.shape[0]), labels_]))  # sum of (z_y - z_max) <= 0
        buffer = np.empty_like(centred)

        def derivatives(beta: float) -> tuple[float, float, float]:
            np.multiply(centred, beta, out=buffer)
            np.exp(buffer, out=buffer)
            total = buffer.sum(axis=1)
            mean = np.einsum("ij,ij->i", buffer, centred) / total
            second = np.einsum("ij,ij->i", buffer, centred_sq) / total
            value = float(np.sum(np.log(total))) - beta * true_gap
            return value, float(np.sum(mean)) - true_gap, float(np.sum(second - mean * mean))

        self.temperature = 1.0 / _newton_1d(derivatives, LOGIT_BETA_BOUNDS)
        self.mode = "logits"
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        return np.asarray(expit(_logit(p) / self.temperature), dtype=np.float64)

    def transform_logits(self, logits: ArrayLike) -> FloatArray:
        """Calibrated top-label confidences of (n_samples, n_classes) logits."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] < 2:
            raise ValueError(f"logits must be (n_samples, n_classes >= 2), got shape {z.shape}")
        return np.asarray(np.max(softmax(z / self.temperature, axis=1), axis=1), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "mode": self.mode}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TemperatureScaling:
        return cls(float(params["temperature"]), str(params.get("mode", "scalar")))


def _check_logits(logits: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, NDArray[np.intp]]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (n_samples, n_classes >= 2), got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits hold NaN or infinite values")
    y = np.asarray(labels)
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {z.shape[0]} integers")
    if y.size == 0 or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}] and not be empty")
    return z, y.astype(np.intp)


def _newton_1d(
    derivatives: Any, bounds: tuple[float, float], start: float = 1.0, tol: float = 1e-10, max_iter: int = 100
) -> float:
    """Minimise a convex function of one bounded variable by safeguarded Newton steps."""
    low, high = bounds
    beta = start
    value, grad, hess = derivatives(beta)
    for _ in range(max_iter):
        step = grad / hess if hess > 0 else np.sign(grad) * 0.5 * beta
        candidate = float(np.clip(beta - step, low, high))
        new_value, new_grad, new_hess = derivatives(candidate)
        halvings = 0
        while new_value > value + 1e-12 * abs(value) and halvings < 40:  # backtrack
            candidate = 0.5 * (beta + candidate)
            new_value, new_grad, new_hess = derivatives(candidate)
            halvings += 1
        if abs(candidate - beta) <= tol * max(1.0, beta):
            return candidate
        beta, value, grad, hess = candidate, new_value, new_grad, new_hess
    return beta


def _platt_targets(y: FloatArray) -> FloatArray:
    """Platt (1999) prior-corrected targets: keep a single-class or tiny fit finite."""
    positives = float(y.sum())
    negatives = float(y.size - positives)
    return np.where(y == 1.0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))


def _fit_logistic(
    features: FloatArray, y: FloatArray, bounds: list[tuple[float | None, float | None]], start: FloatArray
) -> FloatArray:
    """Weights w (last one the intercept) maximising the likelihood of sigmoid(X w), within bounds."""
    t = _platt_targets(y)
    design = np.column_stack([features, np.ones(features.shape[0])])

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        u = design @ w
        value = -float(np.sum(t * log_expit(u) + (1.0 - t) * log_expit(-u)))
        grad = design.T @ (expit(u) - t)
        return value, grad

    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(result.x, dtype=np.float64)


class PlattScaling(Calibrator):
    """Platt scaling on the logit of the confidence: ``sigmoid(a * logit(p) + b)`` with a >= 0.

    With a = 1, b = 0 it is the identity; a >= 0 keeps the map non-decreasing. Fitted by maximum
    likelihood on Platt's prior-corrected targets.
    """

    method = "platt"

    def __init__(self, a: float = 1.0, b: float = 0.0):
        self.a = float(a)
        self.b = float(b)

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> PlattScaling:
        p, y = _fit_inputs(confidence, correct)
        w = _fit_logistic(_logit(p)[:, None], y, [(0.0, None), (None, None)], np.array([1.0, 0.0]))
        self.a, self.b = float(w[0]), float(w[1])
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        return np.asarray(expit(self.a * _logit(p) + self.b), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PlattScaling:
        return cls(float(params["a"]), float(params["b"]))


class BetaCalibration(Calibrator):
    """Beta calibration (Kull, Silva Filho & Flach 2017): ``sigmoid(a ln p - b ln(1 - p) + c)``.

    a, b >= 0 keeps the map non-decreasing (the paper's constrained variant); a = b = 1, c = 0 is
    the identity. Fitted by maximum likelihood on Platt's prior-corrected targets.
    """

    method = "beta"

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = float(a), float(b), float(c)

    @staticmethod
    def _features(p: FloatArray) -> FloatArray:
        q = np.clip(p, CLIP, 1.0 - CLIP)
        return np.column_stack([np.log(q), -np.log1p(-q)])

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> BetaCalibration:
        p, y = _fit_inputs(confidence, correct)
        w = _fit_logistic(
            self._features(p), y, [(0.0, None), (0.0, None), (None, None)], np.array([1.0, 1.0, 0.0])
        )
        self.a, self.b, self.c = float(w[0]), float(w[1]), float(w[2])
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        return np.asarray(expit(self._features(p) @ np.array([self.a, self.b]) + self.c), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BetaCalibration:
        return cls(float(params["a"]), float(params["b"]), float(params["c"]))


def _pava(values: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted pool-adjacent-violators: the non-decreasing least-squares fit to ``values``."""
    blocks_value: list[float] = []
    blocks_weight: list[float] = []
    blocks_size: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks_value.append(value)
        blocks_weight.append(weight)
        blocks_size.append(1)
        while len(blocks_value) > 1 and blocks_value[-2] > blocks_value[-1]:
            w = blocks_weight[-2] + blocks_weight[-1]
            v = (
                (blocks_value[-2] * blocks_weight[-2] + blocks_value[-1] * blocks_weight[-1]) / w
                if w > 0
                else 0.0
            )
            size = blocks_size[-2] + blocks_size[-1]
            del blocks_value[-1], blocks_weight[-1], blocks_size[-1]
            blocks_value[-1], blocks_weight[-1], blocks_size[-1] = v, w, size
    return np.repeat(np.array(blocks_value), blocks_size)


class IsotonicCalibration(Calibrator):
    """Isotonic regression (Zadrozny & Elkan 2002): the non-decreasing step fit, linearly
    interpolated between thresholds (scikit-learn's IsotonicRegression), clipped outside them and
    kept within [1/(n+2), (n+1)/(n+2)]."""

    method = "isotonic"

    def __init__(self, x: list[float] | None = None, y: list[float] | None = None):
        self.x = np.asarray(x if x is not None else [0.0, 1.0], dtype=np.float64)
        self.y = np.asarray(y if y is not None else [0.0, 1.0], dtype=np.float64)

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        p, y = _fit_inputs(confidence, correct)
        n = p.size
        model = IsotonicRegression(out_of_bounds="clip", y_min=1.0 / (n + 2), y_max=(n + 1.0) / (n + 2)).fit(
            p, y
        )
        self.x = np.asarray(model.X_thresholds_, dtype=np.float64)
        self.y = np.clip(
            np.asarray(model.y_thresholds_, dtype=np.float64), 1.0 / (n + 2), (n + 1.0) / (n + 2)
        )
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        return np.asarray(np.interp(p, self.x, self.y), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IsotonicCalibration:
        return cls(list(params["x"]), list(params["y"]))


class HistogramBinning(Calibrator):
    """Histogram binning (Zadrozny & Elkan 2001) on equal-mass bins, made monotone.

    Each bin maps to its smoothed accuracy (k + 1)/(n + 2) (a Beta(1, 1) prior: tiny bins stay off
    0 and 1); the bin values are then pooled by weighted PAVA so the step map is non-decreasing.
    """

    method = "histogram"

    def __init__(self, n_bins: int = 15, edges: list[float] | None = None, values: list[float] | None = None):
        self.n_bins = n_bins
        self.edges = np.asarray(edges if edges is not None else [0.0, 1.0], dtype=np.float64)
        self.values = np.asarray(values if values is not None else [0.5], dtype=np.float64)

    def fit(self, confidence: ArrayLike, correct: ArrayLike) -> HistogramBinning:
        p, y = _fit_inputs(confidence, correct)
        bins = max(1, min(self.n_bins, p.size // 2 or 1))
        inner = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]))
        index = np.searchsorted(inner, p, side="left")
        size = inner.size + 1
        count = np.bincount(index, minlength=size).astype(np.float64)
        hits = np.bincount(index, weights=y, minlength=size)
        smoothed = (hits + 1.0) / (count + 2.0)
        self.values = _pava(smoothed, count + 2.0)
        self.edges = np.concatenate([[0.0], inner, [1.0]])
        return self

    def transform(self, confidence: ArrayLike) -> FloatArray:
        p, _ = validate(confidence)
        index = np.searchsorted(self.edges[1:-1], p, side="left")
        return np.asarray(self.values[index], dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "edges": self.edges.tolist(), "values": self.values.tolist()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> HistogramBinning:
        return cls(int(params["n_bins"]), list(params["edges"]), list(params["values"]))


CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.method: cls
    for cls in (
        IdentityCalibrator,
        TemperatureScaling,
        PlattScaling,
        IsotonicCalibration,
        HistogramBinning,
        BetaCalibration,
    )
}


def from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator from ``Calibrator.to_dict()`` output."""
    method = data.get("method")
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibrator method {method!r}; known: {sorted(CALIBRATORS)}")
    return CALIBRATORS[method].from_params(dict(data.get("params", {})))


def make(method: str) -> Calibrator:
    """A fresh, unfitted calibrator of the given method."""
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibrator method {method!r}; known: {sorted(CALIBRATORS)}")
    return CALIBRATORS[method]()


def calibrate_rows(
    calibrator: Calibrator, confidence: ArrayLike, logits: list[FloatArray | None] | None = None
) -> FloatArray:
    """Calibrated confidences of rows that may carry their class logits.

    A temperature fitted on full logits (mode ``logits``) is applied to each row's logits when it has
    them (``max softmax(z / T)``); every other row, and every other calibrator, uses the scalar map
    of the top-label confidence (for a logits-mode temperature: ``sigmoid(logit(p) / T)``).
    """
    p, _ = validate(confidence)
    out = calibrator.transform(p)
    if logits is None or not isinstance(calibrator, TemperatureScaling) or calibrator.mode != "logits":
        return out
    if len(logits) != p.size:
        raise ValueError(f"logits has {len(logits)} rows, confidence {p.size}")
    for i, z in enumerate(logits):
        if z is not None:
            out[i] = calibrator.transform_logits(np.asarray(z, dtype=np.float64)[None, :])[0]
    return out
