"""Anytime-valid evidence that calibration error exceeds a tolerance: an e-detector built by betting.

The null hypothesis of one series is *the population L1 calibration error over the B confidence bins
is at most the tolerance τ* — the quantity the ECE estimates: ``CE = Σ_b w_b |p̄_b - ȳ_b|``. For any
sign pattern ``s ∈ {-1, 0, +1}^B`` and a label ``(p, y)`` falling in bin ``b``, the payoff
``X = s_b (p - y) - τ`` has ``E[X] = Σ_b w_b s_b (p̄_b - ȳ_b) - τ <= CE - τ <= 0`` under the null, so a
gambler who stakes a fixed fraction λ of her wealth on ``X`` cannot expect to win. The patterns cover
the usual ways calibration fails: everything overconfident or underconfident, only the confidences
above a level (over or under), only those below it, and over above a level with under below it.

With ``x = X / (1 + τ)`` in ``[-1, 1)`` and a fraction ``λ < 1``, one label multiplies the wealth by
``1 + λ x``; a pattern's log wealth over a batch is a sum over bins of per-bin sums
``G_b(λ, s) = Σ log(1 + λ (s (p - y) - τ) / (1 + τ))`` for ``s = ±1`` (a bin the pattern skips costs
``n_b log(1 - λ τ / (1 + τ))``). The fold computes these sums when it folds a label — before the
label is ever bet on, with the tolerance of that moment — so the evidence of a batch does not
depend on the order of its labels, and batches merge by addition, like the sketch's moments.

The detector is a mixture over a fixed grid of components (λ, pattern) with fixed prior weights
``w_k`` (half the mass on the two uniform patterns), each a Shiryaev-Roberts e-detector
``R_n = e_n · (R_{n-1} + 1)`` (the sum over every possible start of the e-process started there);
it alarms when the mixture ``Σ_k w_k R_k`` reaches the threshold ``A``. Under the null the mixture
minus the step count is a supermartingale, so the mean number of steps before a false alarm is at
least ``A`` (docs/architecture.md, "Drift decisions", gives the proof and the filtration). The
change point estimate is where the strongest component's current run began: the last step at which
its statistic was still below 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from monitor.calibration import metrics

__all__ = [
    "LAMBDAS",
    "PAIRED",
    "BetGrid",
    "Detector",
    "LabelSums",
    "bet_sums",
    "idle_costs",
    "label_sums",
    "log_increments",
    "paired_log_increments",
]

FloatArray = NDArray[np.float64]
# Betting fractions: a geometric grid from a cautious bet (drifts a few points past τ on noisy bins)
# to a bold one (large drifts, or confident bins where (p - y) varies little).
LAMBDAS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
_CUTS = 4  # confidence levels at which the one-sided patterns switch
# Prior mass of the two uniform patterns (all over-, all underconfident): the common way a model
# drifts gets most of it, the one-sided shapes share the rest.
UNIFORM_MASS = 0.5


def _psi(lam: FloatArray) -> FloatArray:
    return np.asarray(-np.log1p(-lam) - lam, dtype=np.float64)


def sign_patterns(bins: int) -> NDArray[np.float64]:
    """The bet shapes over ``bins`` bins, one per row, entries in {-1, 0, +1}."""
    rows: list[list[float]] = [[1.0] * bins, [-1.0] * bins]
    cuts = sorted({round(bins * k / (_CUTS + 1)) for k in range(1, _CUTS + 1)} - {0, bins})
    for c in cuts:
        upper = [0.0] * c + [1.0] * (bins - c)  # only the confidences above the level
        split = [-1.0] * c + [1.0] * (bins - c)  # over above the level, under below it
        for shape in (upper, split):
            rows.append(shape)
            rows.append([-v for v in shape])
    return np.array(rows, dtype=np.float64)


@dataclass(frozen=True)
class BetGrid:
    """The fixed mixture components: every betting fraction with every sign pattern."""

    lambdas: FloatArray
    patterns: FloatArray  # (P, B); the first two rows are the uniform ones

    @classmethod
    def for_bins(cls, bins: int) -> BetGrid:
        return cls(np.array(LAMBDAS, dtype=np.float64), sign_patterns(bins))

    @property
    def log_weights(self) -> FloatArray:
        """Log prior weight of each component (λ-major, like ``log_increments``); they sum to 1."""
        shapes = self.patterns.shape[0]
        per_shape = np.full(shapes, (1.0 - UNIFORM_MASS) / max(shapes - 2, 1))
        per_shape[:2] = UNIFORM_MASS / 2 if shapes > 2 else 1.0 / shapes
        weights = np.tile(per_shape, self.lambdas.size) / self.lambdas.size
        return np.asarray(np.log(weights), dtype=np.float64)

    @property
    def size(self) -> int:
        return int(self.lambdas.size * self.patterns.shape[0])

    @property
    def bins(self) -> int:
        return int(self.patterns.shape[1])


def bet_sums(
    p: FloatArray, y: FloatArray, cell: NDArray[np.intp], cells: int, tolerance: float
) -> FloatArray:
    """Per cell (a series' bin), ``G(λ, s)`` for every λ and s = +1, -1: shape (cells, L, 2)."""
    diff = (p - y)[:, None]
    out = np.zeros((cells, len(LAMBDAS), 2))
    for k, lam in enumerate(LAMBDAS):
        for j, sign in enumerate((1.0, -1.0)):
            gain = np.log1p(lam * (sign * diff[:, 0] - tolerance) / (1.0 + tolerance))
            out[:, k, j] = np.bincount(cell, weights=gain, minlength=cells)
    return out


PAIRED = "paired"  # the Brier difference calibrated minus raw, one cell per group


@dataclass(frozen=True)
class LabelSums:
    """The occupied cells of one score: group, bin, and the labels' sums (``g``: (cells, L, 2) bet
    sums; (cells, 0, 2) for the paired difference, which is bet on from its moments)."""

    score: str
    group: NDArray[np.int64]
    bin: NDArray[np.int64]
    n: FloatArray
    d: FloatArray
    q: FloatArray
    g: FloatArray


def label_sums(
    group: NDArray[np.int64],
    groups: int,
    bins: int,
    scores: dict[str, FloatArray],
    y: FloatArray,
    tolerance: FloatArray,
) -> list[LabelSums]:
    """What the detectors need of new labels, per group and confidence bin of each score: ``n``,
    ``Σ(p - y)``, ``Σ(p - y)²`` and the bet sums at the group's ``tolerance``; with two scores (raw,
    calibrated), also the paired Brier difference per group. Sums merge by addition."""
    found: list[LabelSums] = []
    if not group.size:
        return found
    size = groups * bins
    for score, p in scores.items():
        cell = group * bins + metrics.bin_index(p, bins)
        diff = p - y
        n = np.bincount(cell, minlength=size)
        d = np.bincount(cell, weights=diff, minlength=size)
        q = np.bincount(cell, weights=diff * diff, minlength=size)
        g = np.zeros((size, len(LAMBDAS), 2))
        for tau in np.unique(tolerance).tolist():
            mine = tolerance[group] == tau
            g += bet_sums(p[mine], y[mine], cell[mine], size, tau)
        occupied = np.flatnonzero(n)
        found.append(
            LabelSums(score, occupied // bins, occupied % bins, n[occupied].astype(np.float64),
                      d[occupied].astype(np.float64), q[occupied].astype(np.float64), g[occupied])
        )  # fmt: skip
    if len(scores) == 2:
        raw, calibrated = scores.values()
        delta = (calibrated - y) ** 2 - (raw - y) ** 2
        n = np.bincount(group, minlength=groups)
        d = np.bincount(group, weights=delta, minlength=groups)
        q = np.bincount(group, weights=delta * delta, minlength=groups)
        occupied = np.flatnonzero(n)
        none = np.zeros(occupied.size, dtype=np.int64)
        n_, d_, q_ = (v[occupied].astype(np.float64) for v in (n, d, q))
        found.append(LabelSums(PAIRED, occupied, none, n_, d_, q_, np.zeros((occupied.size, 0, 2))))
    return found


def idle_costs(n: FloatArray, tolerance: float) -> FloatArray:
    """What the labels of a bin cost a pattern that skips it: ``n_b log(1 - λτ/(1 + τ))``, (B, L)."""
    lambdas = np.array(LAMBDAS, dtype=np.float64)
    return np.asarray(np.outer(n, np.log1p(-lambdas * tolerance / (1.0 + tolerance))), dtype=np.float64)


def log_increments(grid: BetGrid, g: FloatArray, idle: FloatArray) -> FloatArray:
    """Log wealth of one batch for every component (λ-major), from per-bin bet sums ``g``
    (B, L, 2) and per-bin ``idle_costs`` (B, L)."""
    up = (grid.patterns > 0).astype(np.float64)  # (P, B)
    down = (grid.patterns < 0).astype(np.float64)
    skip = 1.0 - up - down
    wealth = (
        np.einsum("pb,bl->lp", up, g[:, :, 0])
        + np.einsum("pb,bl->lp", down, g[:, :, 1])
        + np.einsum("pb,bl->lp", skip, idle)
    )
    return np.asarray(wealth.ravel(), dtype=np.float64)


def paired_log_increments(
    lambdas: FloatArray, n: float, sum_x: float, sum_xx: float, margin: float
) -> FloatArray:
    """Log e-values of a batch of paired differences ``Δ ∈ [-1, 1]`` against ``E[Δ] <= margin``.

    From ``Σx`` and ``Σx²`` only, through Fan et al.'s bound ``log(1 + λx) >= λx - ψ(λ) x²`` (x >= -1),
    so its factor is at most the wealth's and stays an e-value."""
    scale = 1.0 + margin
    sx = (sum_x - n * margin) / scale
    sxx = (sum_xx - 2.0 * margin * sum_x + n * margin**2) / scale**2
    return np.asarray(lambdas * sx - _psi(lambdas) * sxx, dtype=np.float64)


@dataclass
class Detector:
    """The mixture Shiryaev-Roberts state of one series: log R per component and where each run began."""

    log_r: FloatArray
    run_start: FloatArray
    log_weights: FloatArray
    steps: int = 0
    labels: int = 0

    @classmethod
    def fresh(cls, log_weights: FloatArray) -> Detector:
        size = log_weights.size
        return cls(np.full(size, -np.inf), np.full(size, np.nan), log_weights)

    def step(self, increments: FloatArray, at: float, labels: int = 0) -> None:
        """One batch: ``R_k <- e_k (R_k + 1)``; a component whose statistic was below 1 starts a new run."""
        if increments.shape != self.log_r.shape:
            raise ValueError(f"{increments.size} increments for {self.log_r.size} components")
        restart = ~(self.log_r > 0.0)
        self.run_start = np.where(restart, at, self.run_start)
        self.log_r = increments + np.logaddexp(0.0, self.log_r)
        self.__dict__.pop("log_evidence", None)  # the cached mixture is stale
        self.steps += 1
        self.labels += labels

    @cached_property
    def log_evidence(self) -> float:
        """log of the mixture ``Σ_k w_k R_k`` (``-inf`` before the first batch)."""
        weighted = self.log_r + self.log_weights
        finite = weighted[np.isfinite(weighted)]
        if not finite.size:
            return -math.inf
        top = float(finite.max())
        return top + math.log(float(np.exp(finite - top).sum()))

    def alarmed(self, threshold: float) -> bool:
        return self.log_evidence >= math.log(threshold)

    @property
    def change_point(self) -> float | None:
        """Start of the run of the component that carries the most evidence."""
        weighted = self.log_r + self.log_weights
        if not np.isfinite(weighted).any():
            return None
        value = float(self.run_start[int(np.argmax(weighted))])
        return None if math.isnan(value) else value
