"""CalibrationSketch: mergeable per-bin moments from which every calibration metric is exact.

Confidence in [0, 1] is cut into F equal-width fine bins (the ``(lo, hi]`` convention of
``metrics``). Per fine bin the sketch keeps, over all predictions, ``n`` and ``sum p``; over the
labelled ones ``n_l``, ``sum p``, ``sum p^2``, ``sum p^3``, ``sum p^4``, ``sum y``, ``sum y p`` and
``sum log-likelihood``. These moments merge by addition, so a time window, a union of replicas or a
coarser binning (any bin count dividing F) is a sum, and each metric needs O(bins) work:

* Brier  = (sum p^2 - 2 sum y p + sum y) / n_l                      (y^2 = y)
* Spiegelhalter numerator = sum (y - p)(1 - 2p) = sum y - 2 sum y p - sum p + 2 sum p^2
  variance  = sum (1 - 2p)^2 p (1 - p) = sum p - 5 sum p^2 + 8 sum p^3 - 4 sum p^4
* ECE / MCE / RMS / debiased CE / reliability table from per-bin count, sum p and sum y.

Merging is commutative and associative up to floating-point rounding of the sums (counts are exact).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.calibration import metrics
from monitor.calibration.metrics import BinStats, FloatArray, ReliabilityTable

__all__ = [
    "DEFAULT_FINE_BINS",
    "LABEL_SUMS",
    "MOMENTS",
    "CalibrationSketch",
    "Moment",
    "SketchMetrics",
    "grouped_moments",
]


class Moment(IntEnum):
    """Row of each moment in ``CalibrationSketch.moments`` (also the ``sketch_bins`` column order)."""

    N = 0  # predictions, labelled or not
    SUM_P = 1  # their summed confidence
    N_L = 2  # labelled predictions
    S1 = 3  # sum p over labelled
    S2 = 4  # sum p^2
    S3 = 5  # sum p^3
    S4 = 6  # sum p^4
    SY = 7  # sum y (correct)
    SYP = 8  # sum y p
    SLL = 9  # sum of log-likelihoods


MOMENTS: tuple[str, ...] = tuple(m.name.lower() for m in Moment)  # "n", "sum_p", "n_l", "s1", ...
# What an ECE needs per bin: labelled count, summed confidence, summed correctness.
LABEL_SUMS: tuple[Moment, Moment, Moment] = (Moment.N_L, Moment.S1, Moment.SY)
_N, _SUM_P, _N_L, _S1, _S2, _S3, _S4, _SY, _SYP, _SLL = Moment
DEFAULT_FINE_BINS = 120
_MAGIC = b"CSK1"


@dataclass(frozen=True)
class SketchMetrics:
    """Every metric of a sketch at one coarse binning (labelled predictions only, except counts)."""

    predictions: int
    labelled: int
    accuracy: float
    mean_confidence: float
    mean_confidence_all: float
    ece: float
    mce: float
    rms_ce: float
    debiased_ce: float
    brier: float
    nll: float
    spiegelhalter_z: float
    spiegelhalter_p: float


class CalibrationSketch:
    """Per-fine-bin moments; ``moments`` has shape (len(MOMENTS), fine_bins)."""

    __slots__ = ("fine_bins", "moments")

    def __init__(self, fine_bins: int = DEFAULT_FINE_BINS, moments: NDArray[np.float64] | None = None):
        if fine_bins < 1:
            raise ValueError(f"fine_bins must be >= 1, got {fine_bins}")
        self.fine_bins = fine_bins
        if moments is None:
            moments = np.zeros((len(MOMENTS), fine_bins))
        elif moments.shape != (len(MOMENTS), fine_bins):
            raise ValueError(f"moments must have shape {(len(MOMENTS), fine_bins)}, got {moments.shape}")
        self.moments = moments

    # ----------------------------------------------------------------------------------- building
    def add_predictions(self, confidence: ArrayLike) -> CalibrationSketch:
        """Count predictions (labelled or not) into the confidence histogram."""
        p, _ = metrics.validate(confidence)
        index = metrics.bin_index(p, self.fine_bins)
        self.moments[_N] += np.bincount(index, minlength=self.fine_bins)
        self.moments[_SUM_P] += np.bincount(index, weights=p, minlength=self.fine_bins)
        return self

    def add_labelled(self, confidence: ArrayLike, correct: ArrayLike) -> CalibrationSketch:
        """Add the label moments of predictions already counted by ``add_predictions`` (late labels)."""
        p, y = metrics.validate(confidence, correct)
        none = np.zeros(p.size, dtype=bool)
        self.moments += grouped_moments(np.zeros(p.size, dtype=np.int64), 1, self.fine_bins, p, y, none)[0]
        return self

    def add(self, confidence: ArrayLike, correct: ArrayLike | None = None) -> CalibrationSketch:
        """Add predictions, and their labels when given."""
        self.add_predictions(confidence)
        if correct is not None:
            self.add_labelled(confidence, correct)
        return self

    @classmethod
    def from_arrays(
        cls, confidence: ArrayLike, correct: ArrayLike | None = None, fine_bins: int = DEFAULT_FINE_BINS
    ) -> CalibrationSketch:
        return cls(fine_bins).add(confidence, correct)

    def merge(self, other: CalibrationSketch) -> CalibrationSketch:
        """A new sketch holding both (neither input changes)."""
        self._check_compatible(other)
        return CalibrationSketch(self.fine_bins, self.moments + other.moments)

    @classmethod
    def merge_all(
        cls, sketches: list[CalibrationSketch], fine_bins: int = DEFAULT_FINE_BINS
    ) -> CalibrationSketch:
        if not sketches:
            return cls(fine_bins)
        for sketch in sketches[1:]:
            sketches[0]._check_compatible(sketch)
        return cls(sketches[0].fine_bins, np.sum([s.moments for s in sketches], axis=0))

    def _check_compatible(self, other: CalibrationSketch) -> None:
        if other.fine_bins != self.fine_bins:
            raise ValueError(f"cannot merge sketches of {self.fine_bins} and {other.fine_bins} fine bins")

    def coarsen(self, n_bins: int) -> CalibrationSketch:
        """The same data at ``n_bins`` bins; ``n_bins`` must divide ``fine_bins``."""
        if n_bins < 1 or self.fine_bins % n_bins:
            raise ValueError(f"n_bins ({n_bins}) must divide fine_bins ({self.fine_bins})")
        grouped = self.moments.reshape(len(MOMENTS), n_bins, self.fine_bins // n_bins).sum(axis=2)
        return CalibrationSketch(n_bins, grouped)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CalibrationSketch)
            and other.fine_bins == self.fine_bins
            and bool(np.array_equal(other.moments, self.moments))
        )

    def __hash__(self) -> int:  # mutable: identity hash like any mutable container would refuse
        raise TypeError("CalibrationSketch is mutable and unhashable")

    # -------------------------------------------------------------------------------- serialising
    def to_bytes(self) -> bytes:
        """Compact binary form: magic, fine bin count, then the moments as little-endian float64."""
        header = _MAGIC + int(self.fine_bins).to_bytes(4, "little")
        return header + self.moments.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CalibrationSketch:
        if blob[:4] != _MAGIC:
            raise ValueError("not a serialised CalibrationSketch")
        fine_bins = int.from_bytes(blob[4:8], "little")
        data = np.frombuffer(blob, dtype="<f8", offset=8)
        if data.size != len(MOMENTS) * fine_bins:
            raise ValueError("truncated CalibrationSketch")
        return cls(fine_bins, data.reshape(len(MOMENTS), fine_bins).astype(np.float64))

    def to_dict(self) -> dict[str, Any]:
        return {"fine_bins": self.fine_bins, "moments": base64.b64encode(self.to_bytes()).decode()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSketch:
        sketch = cls.from_bytes(base64.b64decode(data["moments"]))
        if sketch.fine_bins != data["fine_bins"]:
            raise ValueError("fine_bins does not match the serialised moments")
        return sketch

    # ----------------------------------------------------------------------------------- metrics
    @property
    def predictions(self) -> int:
        return int(self.moments[_N].sum())

    @property
    def labelled(self) -> int:
        return int(self.moments[_N_L].sum())

    def histogram(self, n_bins: int | None = None) -> FloatArray:
        """Confidence histogram over all predictions (labelled or not)."""
        sketch = self if n_bins is None else self.coarsen(n_bins)
        return np.array(sketch.moments[_N], dtype=np.float64)

    def bin_stats(self, n_bins: int) -> BinStats:
        """Labelled per-bin sums at ``n_bins`` equal-width bins (must divide fine_bins)."""
        coarse = self.coarsen(n_bins)
        return BinStats(
            metrics.bin_edges(n_bins), coarse.moments[_N_L], coarse.moments[_S1], coarse.moments[_SY]
        )

    def equal_mass_bin_stats(self, n_bins: int) -> BinStats:
        """Approximately equal-mass bins built from whole fine bins (labelled counts)."""
        counts = self.moments[_N_L]
        total = counts.sum()
        if total == 0:
            raise ValueError("no labelled predictions")
        cumulative = np.cumsum(counts)
        targets = total * np.arange(1, n_bins) / n_bins
        cuts = np.unique(np.searchsorted(cumulative, targets, side="left") + 1)
        cuts = cuts[(cuts > 0) & (cuts < self.fine_bins)]
        bounds = np.concatenate([[0], cuts, [self.fine_bins]])
        fine_edges = metrics.bin_edges(self.fine_bins)
        return BinStats(
            edges=fine_edges[bounds],
            count=np.add.reduceat(counts, bounds[:-1]),
            sum_confidence=np.add.reduceat(self.moments[_S1], bounds[:-1]),
            sum_correct=np.add.reduceat(self.moments[_SY], bounds[:-1]),
        )

    def _require_labels(self) -> None:
        if self.labelled == 0:
            raise ValueError("the sketch holds no labelled predictions")

    def ece(self, n_bins: int = 15, strategy: str = "uniform") -> float:
        self._require_labels()
        stats = self.bin_stats(n_bins) if strategy == "uniform" else self.equal_mass_bin_stats(n_bins)
        return metrics.ece_from_bins(stats)

    def mce(self, n_bins: int = 15) -> float:
        self._require_labels()
        return metrics.mce_from_bins(self.bin_stats(n_bins))

    def rms_ce(self, n_bins: int = 15) -> float:
        self._require_labels()
        return metrics.rms_from_bins(self.bin_stats(n_bins))

    def debiased_ce(self, n_bins: int = 15, squared: bool = False) -> float:
        self._require_labels()
        return metrics.debiased_from_bins(self.bin_stats(n_bins), squared)

    def reliability_table(self, n_bins: int = 15) -> ReliabilityTable:
        return metrics.table_from_bins(self.bin_stats(n_bins))

    def _totals(self) -> NDArray[np.float64]:
        return np.asarray(self.moments.sum(axis=1), dtype=np.float64)

    def brier(self) -> float:
        self._require_labels()
        t = self._totals()
        return float((t[_S2] - 2.0 * t[_SYP] + t[_SY]) / t[_N_L])

    def nll(self) -> float:
        self._require_labels()
        t = self._totals()
        return float(-t[_SLL] / t[_N_L])

    def accuracy(self) -> float:
        self._require_labels()
        t = self._totals()
        return float(t[_SY] / t[_N_L])

    def mean_confidence(self, labelled_only: bool = True) -> float:
        t = self._totals()
        n, s = (t[_N_L], t[_S1]) if labelled_only else (t[_N], t[_SUM_P])
        if n == 0:
            raise ValueError("the sketch holds no predictions of that kind")
        return float(s / n)

    def spiegelhalter_z(self) -> tuple[float, float]:
        self._require_labels()
        t = self._totals()
        return metrics.spiegelhalter_from_sums(t[_N_L], t[_S1], t[_S2], t[_S3], t[_S4], t[_SY], t[_SYP])

    def ece_bootstrap_ci(
        self,
        n_bins: int = 15,
        level: float = 0.95,
        n_boot: int = 1000,
        seed: int | np.random.Generator | None = 0,
    ) -> tuple[float, float]:
        """Parametric bootstrap CI of the ECE from the moments alone.

        Each draw resamples the bin counts from a multinomial with the observed bin frequencies and
        the correct count of each bin from a binomial with the observed bin accuracy; the bin's mean
        confidence is held at its observed value (the sketch keeps no within-bin spread of p beyond
        moments). Vectorised over draws: O(n_boot x bins). The interval is bias-corrected like
        ``metrics.ece_bootstrap_ci``.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        self._require_labels()
        stats = self.bin_stats(n_bins)
        rng = np.random.default_rng(seed)
        total = int(stats.total)
        occupied = stats.count > 0
        freq = stats.count[occupied] / total
        acc = stats.sum_correct[occupied] / stats.count[occupied]
        conf = stats.sum_confidence[occupied] / stats.count[occupied]
        counts = rng.multinomial(total, freq, size=n_boot)
        correct = rng.binomial(counts, acc)
        values = metrics.ece_from_gap(correct - counts * conf, total)
        return metrics.bias_corrected_interval(values, metrics.ece_from_bins(stats), level)

    def metrics(self, n_bins: int = 15) -> SketchMetrics:
        """All scalar metrics at ``n_bins`` equal-width bins."""
        self._require_labels()
        z, p_value = self.spiegelhalter_z()
        return SketchMetrics(
            predictions=self.predictions,
            labelled=self.labelled,
            accuracy=self.accuracy(),
            mean_confidence=self.mean_confidence(),
            mean_confidence_all=self.mean_confidence(labelled_only=False),
            ece=self.ece(n_bins),
            mce=self.mce(n_bins),
            rms_ce=self.rms_ce(n_bins),
            debiased_ce=self.debiased_ce(n_bins),
            brier=self.brier(),
            nll=self.nll(),
            spiegelhalter_z=z,
            spiegelhalter_p=p_value,
        )


def grouped_moments(
    group: NDArray[np.int64],
    n_groups: int,
    fine_bins: int,
    p: NDArray[np.float64],
    y: NDArray[np.float64],
    count_prediction: NDArray[np.bool_],
    count_label: NDArray[np.bool_] | None = None,
) -> NDArray[np.float64]:
    """The moments of many sketches at once: shape (n_groups, len(MOMENTS), fine_bins).

    Row ``i`` adds to sketch ``group[i]``: as a prediction where ``count_prediction`` (``n``,
    ``sum p``) and as a label where ``count_label`` (default: every row). One vectorised pass,
    whatever the number of groups: the daemon's fold and the sketch's own ``add_labelled`` use it.
    """
    key = group * fine_bins + metrics.bin_index(p, fine_bins)
    size = n_groups * fine_bins
    pred = count_prediction.astype(np.float64)
    lab = np.ones(p.size) if count_label is None else count_label.astype(np.float64)
    p2 = p * p
    weights = {
        Moment.N: pred,
        Moment.SUM_P: pred * p,
        Moment.N_L: lab,
        Moment.S1: lab * p,
        Moment.S2: lab * p2,
        Moment.S3: lab * p2 * p,
        Moment.S4: lab * p2 * p2,
        Moment.SY: lab * y,
        Moment.SYP: lab * y * p,
        Moment.SLL: lab * metrics.log_likelihood(p, y),
    }
    out = np.zeros((len(MOMENTS), size))
    for moment, weight in weights.items():
        out[moment] = np.bincount(key, weights=weight, minlength=size)
    return out.reshape(len(MOMENTS), n_groups, fine_bins).transpose(1, 0, 2)
