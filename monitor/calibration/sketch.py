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

The tail: equal-width bins are coarse where decisions are finest (a 0.99 precision target must
choose a threshold between 0.9917 and 1.0 at 120 bins). So the top ~5% of confidence, ``(1 - R,
1]`` with ``R`` a whole number of fine bins, is counted a second time in ``TAIL_BINS`` sub-bins
spaced evenly in ``log(1 - p)`` (ten per decade: edges 0.95, 0.960, 0.968, 0.975, 0.980, 0.984,
0.987, 0.990, 0.992, ... 0.99996). The tail holds the same moments as the uniform bins it refines
and is stored after them (columns ``fine_bins ..``); every metric reads the uniform bins only, and
threshold advice reads the uniform bins below ``1 - R`` and the tail above.

Merging is commutative and associative up to floating-point rounding of the sums (counts are exact).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.calibration import metrics
from monitor.calibration.metrics import BinStats, FloatArray, ReliabilityTable

__all__ = [
    "DEFAULT_FINE_BINS",
    "LABEL_SUMS",
    "MOMENTS",
    "TAIL_BINS",
    "CalibrationSketch",
    "Moment",
    "SketchMetrics",
    "grouped_moments",
    "tail_edges",
    "tail_start_bin",
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
TAIL_BINS = 32  # sub-bins of the top ~5% of confidence, ten per decade of 1 - p
_TAIL_SHARE = 0.05
_MAGIC = b"CSK1"


def tail_start_bin(fine_bins: int) -> int:
    """The first uniform bin the tail refines: the tail covers the top ``fine_bins - start`` bins."""
    return fine_bins - max(1, round(fine_bins * _TAIL_SHARE))


@lru_cache(maxsize=16)
def _tail_edges(fine_bins: int) -> NDArray[np.float64]:
    width = (fine_bins - tail_start_bin(fine_bins)) / fine_bins
    edges = 1.0 - width * 10.0 ** (-np.arange(TAIL_BINS) / 10.0)
    edges.setflags(write=False)
    return edges


def tail_edges(fine_bins: int) -> NDArray[np.float64]:
    """Lower edges of the tail's sub-bins, ascending (sub-bin ``k`` is ``(edges[k], edges[k+1]]``,
    the last one ends at 1); the first edge is a uniform bin edge."""
    return _tail_edges(fine_bins)


def _tail_index(p: NDArray[np.float64], fine_bins: int) -> NDArray[np.int64]:
    """Tail sub-bin of each confidence, -1 below the tail (the ``(lo, hi]`` convention)."""
    return np.searchsorted(_tail_edges(fine_bins), p, side="left").astype(np.int64) - 1


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
    """Per-fine-bin moments; ``moments`` has shape (len(MOMENTS), fine_bins + TAIL_BINS): the
    uniform bins, then the tail (module docstring)."""

    __slots__ = ("fine_bins", "moments")

    def __init__(self, fine_bins: int = DEFAULT_FINE_BINS, moments: NDArray[np.float64] | None = None):
        if fine_bins < 1:
            raise ValueError(f"fine_bins must be >= 1, got {fine_bins}")
        self.fine_bins = fine_bins
        shape = (len(MOMENTS), fine_bins + TAIL_BINS)
        if moments is None:
            moments = np.zeros(shape)
        elif moments.shape != shape:
            raise ValueError(f"moments must have shape {shape}, got {moments.shape}")
        self.moments = moments

    @property
    def uniform(self) -> NDArray[np.float64]:
        """The equal-width bins' moments (a view): what every metric reads."""
        return self.moments[:, : self.fine_bins]

    @property
    def tail(self) -> NDArray[np.float64]:
        """The tail sub-bins' moments (a view), a finer split of the top uniform bins."""
        return self.moments[:, self.fine_bins :]

    # ----------------------------------------------------------------------------------- building
    def add_predictions(self, confidence: ArrayLike) -> CalibrationSketch:
        """Count predictions (labelled or not) into the confidence histogram."""
        p, _ = metrics.validate(confidence)
        cells, rows = _cells(np.zeros(p.size, dtype=np.int64), self.fine_bins, p)
        width = self.moments.shape[1]
        self.moments[_N] += np.bincount(cells, minlength=width)
        self.moments[_SUM_P] += np.bincount(cells, weights=p[rows], minlength=width)
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
        grouped = self.uniform.reshape(len(MOMENTS), n_bins, self.fine_bins // n_bins).sum(axis=2)
        return CalibrationSketch(n_bins, np.concatenate([grouped, self.tail], axis=1))

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
        """Compact binary form: magic, fine bin count, then the moments (tail included) as
        little-endian float64. Blobs written before the tail existed read back with an empty tail."""
        header = _MAGIC + int(self.fine_bins).to_bytes(4, "little")
        return header + self.moments.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CalibrationSketch:
        if blob[:4] != _MAGIC:
            raise ValueError("not a serialised CalibrationSketch")
        fine_bins = int.from_bytes(blob[4:8], "little")
        data = np.frombuffer(blob, dtype="<f8", offset=8)
        if data.size == len(MOMENTS) * fine_bins:  # before the tail
            data = np.concatenate(
                [data.reshape(len(MOMENTS), fine_bins), np.zeros((len(MOMENTS), TAIL_BINS))], 1
            )
        elif data.size != len(MOMENTS) * (fine_bins + TAIL_BINS):
            raise ValueError("truncated CalibrationSketch")
        return cls(fine_bins, data.reshape(len(MOMENTS), fine_bins + TAIL_BINS).astype(np.float64))

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
        return int(self.uniform[_N].sum())

    @property
    def labelled(self) -> int:
        return int(self.uniform[_N_L].sum())

    def histogram(self, n_bins: int | None = None) -> FloatArray:
        """Confidence histogram over all predictions (labelled or not)."""
        sketch = self if n_bins is None else self.coarsen(n_bins)
        return np.array(sketch.uniform[_N], dtype=np.float64)

    def bin_stats(self, n_bins: int) -> BinStats:
        """Labelled per-bin sums at ``n_bins`` equal-width bins (must divide fine_bins)."""
        coarse = self.coarsen(n_bins)
        return BinStats(
            metrics.bin_edges(n_bins), coarse.uniform[_N_L], coarse.uniform[_S1], coarse.uniform[_SY]
        )

    def equal_mass_bin_stats(self, n_bins: int) -> BinStats:
        """Approximately equal-mass bins built from whole fine bins (labelled counts)."""
        uniform = self.uniform
        counts = uniform[_N_L]
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
            sum_confidence=np.add.reduceat(uniform[_S1], bounds[:-1]),
            sum_correct=np.add.reduceat(uniform[_SY], bounds[:-1]),
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
        return np.asarray(self.uniform.sum(axis=1), dtype=np.float64)

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


def _cells(
    group: NDArray[np.int64], fine_bins: int, p: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Flat cells ``group * (fine_bins + TAIL_BINS) + column`` of each row's uniform bin and, for
    rows in the tail, of their tail sub-bin too; with the row each cell came from."""
    width = fine_bins + TAIL_BINS
    tail = _tail_index(p, fine_bins)
    in_tail = np.flatnonzero(tail >= 0)
    cells = np.concatenate(
        [group * width + metrics.bin_index(p, fine_bins), group[in_tail] * width + fine_bins + tail[in_tail]]
    )
    return cells, np.concatenate([np.arange(p.size), in_tail])


def grouped_moments(
    group: NDArray[np.int64],
    n_groups: int,
    fine_bins: int,
    p: NDArray[np.float64],
    y: NDArray[np.float64],
    count_prediction: NDArray[np.bool_],
    count_label: NDArray[np.bool_] | None = None,
) -> NDArray[np.float64]:
    """The moments of many sketches at once: shape (n_groups, len(MOMENTS), fine_bins + TAIL_BINS).

    Row ``i`` adds to sketch ``group[i]``: as a prediction where ``count_prediction`` (``n``,
    ``sum p``) and as a label where ``count_label`` (default: every row); a row in the tail adds to
    its tail sub-bin as well. One vectorised pass, whatever the number of groups: the daemon's fold
    and the sketch's own ``add_predictions`` / ``add_labelled`` use it.
    """
    width = fine_bins + TAIL_BINS
    key, rows = _cells(group, fine_bins, p)
    size = n_groups * width
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
        out[moment] = np.bincount(key, weights=weight[rows], minlength=size)
    return out.reshape(len(MOMENTS), n_groups, width).transpose(1, 0, 2)
