"""Rolling window sketches kept current in memory by the leader, so a tick never rescans history.

For each window W the leader holds, per series, the sketch of the buckets in ``[since, now]``
(current) and of ``[since - W, since)`` (reference, the previous period). A tick:

1. applies the deltas the aggregation job just committed (a late label lands in the window that
   holds its prediction's bucket, current or reference);
2. slides: buckets that left the current period are read back from the database and moved to the
   reference, and those that left the reference are subtracted.

Loading reads every bucket of both periods once (at start, on gaining the lease, and every
``reload_seconds`` to shed floating-point drift and any write this process did not see, such as a
``rebuild-aggregates`` or a previous leader's last transaction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy import Connection

from monitor.calibration.sketch import CalibrationSketch
from monitor.store.aggregates import BucketDelta, SeriesKey, load_sketches

__all__ = [
    "RollingWindows",
    "Sketches",
]


Sketches = dict[SeriesKey, CalibrationSketch]


@dataclass
class _Window:
    name: str
    seconds: int
    since: float = 0.0
    current: Sketches = field(default_factory=dict)
    reference: Sketches = field(default_factory=dict)


def _add(target: Sketches, source: Sketches, sign: float = 1.0) -> None:
    for key, sketch in source.items():
        if key in target:
            target[key].moments += sign * sketch.moments
        else:
            target[key] = CalibrationSketch(sketch.fine_bins, sign * sketch.moments)


class RollingWindows:
    def __init__(
        self, windows: list[tuple[str, int]], bucket_seconds: int, fine_bins: int, reload_seconds: float
    ):
        self.bucket_seconds = bucket_seconds
        self.fine_bins = fine_bins
        self.reload_seconds = reload_seconds
        self._windows = [_Window(name, seconds) for name, seconds in windows]
        self.loaded_at: float | None = None

    def _since(self, now: float, seconds: int) -> float:
        return math.floor((now - seconds) / self.bucket_seconds) * self.bucket_seconds

    def needs_load(self, now: float) -> bool:
        return self.loaded_at is None or now - self.loaded_at >= self.reload_seconds

    def invalidate(self) -> None:
        self.loaded_at = None

    def load(self, conn: Connection, now: float) -> None:
        for w in self._windows:
            w.since = self._since(now, w.seconds)
            w.current = load_sketches(conn, self.fine_bins, since=w.since)
            w.reference = load_sketches(conn, self.fine_bins, since=w.since - w.seconds, until=w.since)
        self.loaded_at = now

    def apply(self, deltas: list[BucketDelta]) -> None:
        for delta in deltas:
            key = (delta.model, delta.segment, delta.score)
            for w in self._windows:
                if delta.bucket_start >= w.since:
                    target = w.current
                elif delta.bucket_start >= w.since - w.seconds:
                    target = w.reference
                else:
                    continue
                if key in target:
                    target[key].moments += delta.moments
                else:
                    target[key] = CalibrationSketch(self.fine_bins, delta.moments.copy())

    def advance(self, conn: Connection, now: float) -> None:
        for w in self._windows:
            since = self._since(now, w.seconds)
            if since <= w.since:
                continue
            moved = load_sketches(conn, self.fine_bins, since=w.since, until=since)
            dropped = load_sketches(conn, self.fine_bins, since=w.since - w.seconds, until=since - w.seconds)
            _add(w.current, moved, -1.0)
            _add(w.reference, moved)
            _add(w.reference, dropped, -1.0)
            w.since = since

    def periods(self, name: str) -> tuple[Sketches, Sketches]:
        for w in self._windows:
            if w.name == name:
                return w.current, w.reference
        raise KeyError(name)
