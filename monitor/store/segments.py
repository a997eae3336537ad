"""The one segment cap: which segments of a model keep their own series, decided where series are made.

A model's segments get a position in the order the fold first meets them. The first ``cap`` keep
their own name; any later one is written into the sketch buckets as ``other``. Segments beyond the
cap are registered too, up to ``TRACKED_BEYOND_CAP`` of them (a bound: names are the client's), so
the model endpoints can say how many segments ``other`` holds without reading raw rows. Evaluation, the
exported gauges and the binned counters all see the buckets, so they all cap the same way, in every
period of every window, whatever the segments' volumes: two segments swapping rank cannot move data
between their series and ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store.schema import segments
from monitor.vocabulary import OTHER_SEGMENT

__all__ = [
    "TRACKED_BEYOND_CAP",
    "CapOf",
    "SegmentMap",
    "folded_counts",
    "load_positions",
    "registered_series",
]

CapOf = Callable[[str], int]
TRACKED_BEYOND_CAP = 1000  # segments registered past a model's cap (counted in ``other``), at most


def load_positions(conn: Connection, models: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Per model, each registered segment's position (0 = first seen)."""
    query = select(segments.c.model, segments.c.segment, segments.c.position)
    if models is not None:
        query = query.where(segments.c.model.in_(list(models)))
    found: dict[str, dict[str, int]] = {}
    for model, segment, position in conn.execute(query):
        found.setdefault(model, {})[segment] = position
    return found


class SegmentMap:
    """Maps (model, segment) to the series it is folded into, registering new segments under the cap."""

    def __init__(self, positions: dict[str, dict[str, int]], cap_of: CapOf):
        self.positions = positions
        self.cap_of = cap_of
        self.registered: list[tuple[str, str, int]] = []

    @classmethod
    def load(cls, conn: Connection, models: Iterable[str], cap_of: CapOf) -> SegmentMap:
        return cls(load_positions(conn, set(models)), cap_of)

    def series(self, model: str, segment: str) -> str:
        known = self.positions.setdefault(model, {})
        position = known.get(segment)
        cap = self.cap_of(model)
        if position is None and len(known) < cap + TRACKED_BEYOND_CAP:
            position = known[segment] = len(known)
            self.registered.append((model, segment, position))
        return segment if position is not None and position < cap else OTHER_SEGMENT

    def save(self, conn: Connection) -> None:
        """Persist the segments registered since loading, in the caller's (fold) transaction."""
        if self.registered:
            rows = [{"model": m, "segment": s, "position": p} for m, s, p in self.registered]
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(segments).on_conflict_do_nothing(index_elements=["model", "segment"]), rows
            )
            self.registered = []


def folded_counts(positions: dict[str, dict[str, int]], cap_of: CapOf) -> dict[str, int]:
    """Per model, the registered segments folded into ``other`` (exact up to ``TRACKED_BEYOND_CAP``)."""
    return {model: sum(p >= cap_of(model) for p in known.values()) for model, known in positions.items()}


def registered_series(positions: dict[str, dict[str, int]], cap_of: CapOf) -> Callable[[str, str], str]:
    """The read-only mapping evaluation applies to buckets: a segment keeps its series only if it is
    registered within its model's cap. Buckets written before the cap (or by a fold without it)
    thereby land in ``other`` exactly as a capped fold would have put them."""

    def series(model: str, segment: str) -> str:
        position = positions.get(model, {}).get(segment)
        return segment if position is not None and position < cap_of(model) else OTHER_SEGMENT

    return series
