"""The latest evaluation, shared by the exporter and the read API without a database query.

The leader computes it and also persists it (``snapshots`` table) so that every replica serves the
same numbers; followers refresh from there on their own schedule, never on a scrape.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from monitor.evaluation.windows import WindowStats

__all__ = [
    "Snapshot",
    "SnapshotHolder",
]


@dataclass(frozen=True)
class Snapshot:
    created_at: float
    stats: list[WindowStats] = field(default_factory=list)
    calibrators: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)  # {model, segment, kind, active}
    evidence: list[dict[str, Any]] = field(default_factory=list)  # SeriesEvidence.as_dict()

    def for_model(self, model: str) -> list[WindowStats]:
        return [s for s in self.stats if s.model == model]

    def find(self, model: str, segment: str, window: str, score: str) -> WindowStats | None:
        for s in self.stats:
            if (s.model, s.segment, s.window, s.score) == (model, segment, window, score):
                return s
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"created_at": self.created_at, "stats": [s.as_dict() for s in self.stats],
                "calibrators": self.calibrators, "drift": self.drift, "evidence": self.evidence}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            data["created_at"],
            [WindowStats(**s) for s in data["stats"]],
            list(data.get("calibrators", [])),
            list(data.get("drift", [])),  # followers export the leader's drift flags too
            list(data.get("evidence", [])),
        )


class SnapshotHolder:
    """Thread-safe holder of the current Snapshot (None until the first evaluation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None

    def get(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    def set(self, snapshot: Snapshot) -> None:
        with self._lock:
            if self._snapshot is None or snapshot.created_at >= self._snapshot.created_at:
                self._snapshot = snapshot
