"""The leader's drift detectors: bet on the labels folded since the last evaluation, per series.

Three detectors per series (``*`` included), all ``calibration.evidence`` e-detectors:

* ``calibrated``: the served confidence's calibration error exceeds ``drift.tolerance`` — acted on;
* ``raw``: the same for the model's own confidence — reported, never acted on;
* ``paired``: the served confidence is worse than the raw one (mean Brier difference above
  ``tolerance²``) — with ``calibrated`` in alarm, the serving calibrator is rolled back.

One evaluation is one step: the batch is every label folded since the previous evaluation, whatever
its prediction time (the filtration is the fold order; see docs/architecture.md). The calibrated and
paired detectors only bet on predictions made since the serving calibrator took over (their
*epoch*), and start afresh when it changes. States live in memory between evaluations and in the
``evidence`` table, written with the consumption of their input, so a new leader continues them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import Connection

from monitor.calibration.evidence import (
    LAMBDAS,
    BetGrid,
    Detector,
    idle_costs,
    log_increments,
    paired_log_increments,
)
from monitor.config import DriftConfig, parse_duration
from monitor.store.evidence import (
    PAIRED,
    PendingRow,
    StoredDetector,
    consume,
    load_pending,
    load_states,
    save_states,
)
from monitor.vocabulary import MODEL_WIDE, OTHER_SEGMENT, Score

__all__ = ["EvidenceBook", "EvidenceRound", "SeriesEvidence", "epochs_from_changes"]

Key = tuple[str, str, str]  # (model, segment, score)


@dataclass(frozen=True)
class SeriesEvidence:
    """One detector's verdict after an evaluation (exported, shown, judged by the policy)."""

    model: str
    segment: str
    score: str
    log_evidence: float  # natural log of the mixture statistic; -inf before the first label
    threshold: float  # A: the mean steps to a false alarm under the null is at least this
    alarm: bool
    alarm_since: float | None
    change_point: float | None  # prediction time where the strongest run began
    labels: int  # labels bet on since the epoch
    epoch: float

    def as_dict(self) -> dict[str, Any]:
        log10 = self.log_evidence / math.log(10) if math.isfinite(self.log_evidence) else None
        return {
            "model": self.model,
            "segment": self.segment,
            "score": self.score,
            "log10_evidence": log10,
            "log10_threshold": math.log10(self.threshold),
            "alarm": self.alarm,
            "alarm_since": self.alarm_since,
            "change_point": self.change_point,
            "labels": self.labels,
            "epoch": self.epoch,
        }


@dataclass
class _State:
    detector: Detector
    epoch: float
    alarm_since: float | None = None


@dataclass
class EvidenceRound:
    """What one evaluation computed: new states (not yet committed) and every series' verdict."""

    up_to: int | None
    changed: dict[Key, _State] = field(default_factory=dict)
    verdicts: list[SeriesEvidence] = field(default_factory=list)


def epochs_from_changes(changes: dict[tuple[str, str], float]) -> Callable[[str, str], float]:
    """When the calibrator serving a series last changed: its own or the model-wide one for a
    segment; any of the model's for ``*`` and ``other``, which hold every segment."""
    latest: dict[str, float] = {}
    for (model, _), ts in changes.items():
        latest[model] = max(ts, latest.get(model, ts))

    def epoch(model: str, segment: str) -> float:
        if segment in (MODEL_WIDE, OTHER_SEGMENT):
            return latest.get(model, 0.0)
        found = [changes[k] for k in ((model, segment), (model, MODEL_WIDE)) if k in changes]
        return max(found, default=0.0)

    return epoch


def threshold_of(cfg: DriftConfig, interval_seconds: float) -> float:
    """A, in evaluations: ``false_alarm_every`` as a count, or a duration over the interval."""
    every = cfg.false_alarm_every
    if isinstance(every, str):
        return max(parse_duration(every) / interval_seconds, 1.0)
    return float(every)


class EvidenceBook:
    def __init__(self, bins: int, drift_for: Callable[[str, str], DriftConfig], interval_seconds: float):
        self.grid = BetGrid.for_bins(bins)
        self.paired_lambdas = np.array(LAMBDAS, dtype=np.float64)
        self.drift_for = drift_for
        self.interval_seconds = interval_seconds
        self.states: dict[Key, _State] = {}
        self.loaded = False
        self._configs: dict[tuple[str, str], DriftConfig] = {}  # per round

    # ------------------------------------------------------------------------------- persistence
    def load(self, conn: Connection) -> None:
        """Adopt the stored states (a new leader, a restart)."""
        self.states = {}
        for s in load_states(conn):
            weights = self._weights(s.score)
            if s.log_r.size != weights.size:  # the bin count changed: that detector starts afresh
                continue
            detector = Detector(s.log_r, s.run_start, weights, s.steps, s.labels)
            self.states[(s.model, s.segment, s.score)] = _State(detector, s.epoch, s.alarm_since)
        self.loaded = True

    def invalidate(self) -> None:
        self.loaded = False

    def commit(self, conn: Connection, done: EvidenceRound, now: float) -> None:
        """In the transaction that publishes the evaluation: consume the input, save the states."""
        if done.up_to is not None:
            consume(conn, done.up_to)
        save_states(conn, [self._stored(key, state, now) for key, state in done.changed.items()])

    def adopt(self, done: EvidenceRound) -> None:
        self.states.update(done.changed)

    # ---------------------------------------------------------------------------------- a round
    def observe(self, conn: Connection, now: float, epoch_of: Callable[[str, str], float]) -> EvidenceRound:
        """Bet on everything pending; the new states are not adopted until committed."""
        up_to, rows = load_pending(conn)
        done = EvidenceRound(up_to)
        self._configs = {}
        batches = self._batches(rows, epoch_of)
        for key in sorted(set(self.states) | set(batches)):
            model, segment, score = key
            epoch = epoch_of(model, segment) if score != Score.RAW else 0.0
            old = self.states.get(key)
            batch = batches.get(key)
            if old is None or old.epoch < epoch:
                state = _State(Detector.fresh(self._weights(score)), epoch)
            else:  # a detector without new labels is shared, not copied: nothing changes it
                detector = replace(old.detector) if batch is not None else old.detector
                state = _State(detector, old.epoch, old.alarm_since)
            if batch is not None:
                self._step(state, key, batch)
            cfg = self._config(model, segment)
            threshold = threshold_of(cfg, self.interval_seconds)
            alarm = state.detector.alarmed(threshold)
            state.alarm_since = (state.alarm_since or now) if alarm else None
            if (
                old is None
                or batch is not None
                or (old.epoch, old.alarm_since) != (state.epoch, state.alarm_since)
            ):
                done.changed[key] = state
            done.verdicts.append(
                SeriesEvidence(
                    model,
                    segment,
                    score,
                    state.detector.log_evidence,
                    threshold,
                    alarm,
                    state.alarm_since,
                    state.detector.change_point,
                    state.detector.labels,
                    state.epoch,
                )
            )
        return done

    def _config(self, model: str, segment: str) -> DriftConfig:
        found = self._configs.get((model, segment))
        if found is None:
            found = self._configs[(model, segment)] = self.drift_for(model, segment)
        return found

    def _weights(self, score: str) -> np.ndarray:
        if score == PAIRED:
            return np.full(self.paired_lambdas.size, -math.log(self.paired_lambdas.size))
        return self.grid.log_weights

    def _step(self, state: _State, key: Key, batch: _Batch) -> None:
        model, segment, score = key
        tolerance = self._config(model, segment).tolerance
        if score == PAIRED:
            increments = paired_log_increments(
                self.paired_lambdas, batch.n, batch.paired_d, batch.paired_q, tolerance**2
            )
        else:
            increments = log_increments(self.grid, batch.bets, batch.idle)
        state.detector.step(increments, batch.at, batch.labels)

    def _batches(self, rows: list[PendingRow], epoch_of: Callable[[str, str], float]) -> dict[Key, _Batch]:
        """Sum the pending rows per series and score, ``*`` included, past each series' epoch."""
        bins = self.grid.bins
        batches: dict[Key, _Batch] = {}
        for r in rows:
            if r.score != PAIRED and r.bins != bins:
                continue  # folded under another bin count (a configuration change): not bet on
            for segment in (r.segment, MODEL_WIDE):
                if r.score != Score.RAW and r.bucket_start < epoch_of(r.model, segment):
                    continue  # scored by a calibrator that no longer serves this series
                key = (r.model, segment, r.score)
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = _Batch(bins)
                batch.add(r)
        return batches

    def _stored(self, key: Key, state: _State, now: float) -> StoredDetector:
        d = state.detector
        return StoredDetector(
            *key, state.epoch, d.steps, d.labels, d.log_r, d.run_start, state.alarm_since, now
        )


@dataclass
class _Batch:
    bins: int
    n: float = 0.0
    weighted_time: float = 0.0
    paired_d: float = 0.0
    paired_q: float = 0.0
    bets: np.ndarray = field(init=False)
    idle: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bets = np.zeros((self.bins, len(LAMBDAS), 2))
        self.idle = np.zeros((self.bins, len(LAMBDAS)))

    def add(self, row: PendingRow) -> None:
        self.n += row.n
        self.weighted_time += row.n * row.bucket_start
        if row.score == PAIRED:
            self.paired_d += row.d
            self.paired_q += row.q
        else:
            self.bets[row.bin] += row.g
            self.idle[row.bin] += idle_costs(np.array([row.n]), row.tolerance)[0]

    @property
    def labels(self) -> int:
        return round(self.n)

    @property
    def at(self) -> float:
        """The batch's prediction time: the label-weighted mean of its buckets."""
        return self.weighted_time / self.n if self.n else 0.0
