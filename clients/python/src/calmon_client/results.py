"""What the client hands back: a calibrated score, and counters of what happened to logged records."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

__all__ = ["Calibrated", "ClientStats", "Counters"]


@dataclass(frozen=True)
class Calibrated:
    """A score to act on. ``fallback`` is True when calmon could not answer in time: ``confidence``
    is then the raw (uncalibrated) score and ``reason`` says why.

    With a ``target`` precision: ``action`` is "accept" when the confidence is at least calmon's
    advised ``threshold`` for that target, else "review" (also when there is no advice yet, or on
    fallback: the conservative choice)."""

    confidence: float
    raw_confidence: float
    calibrator_version: str | None
    fallback: bool = False
    reason: str | None = None
    action: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ClientStats:
    """Records by fate. ``queued`` are waiting; every other record is counted exactly once.

    ``delivered``: acknowledged by calmon (stored, or recognised as already stored: ``duplicates``
    is the part of ``delivered`` calmon had seen before, e.g. after a retry whose first answer was
    lost). ``rejected``: refused by calmon or not encodable (NaN); never retried. ``dropped``: lost
    on the client: the queue was full (oldest first), or ``close()`` ran out of time.
    """

    queued: int
    delivered: int
    duplicates: int
    rejected: int
    dropped: int
    retries: int
    requests: int


class Counters:
    """Mutable counters shared by the app's threads and the sender (one lock, held for an add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered = self.duplicates = self.rejected = self.dropped = self.retries = self.requests = 0

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def snapshot(self, queued: int) -> ClientStats:
        with self._lock:
            values = {f.name: getattr(self, f.name) for f in fields(ClientStats) if f.name != "queued"}
        return ClientStats(queued=queued, **values)
