"""The bounded in-memory queue between the app's threads and the sender.

Records wait encoded (compact bytes, which the garbage collector never scans), bounded both in
count and in bytes: a record of 4096 log-probabilities weighs ~80 KB, so a count alone would not
bound memory. Full means the sender cannot keep up or calmon is down for long: the oldest records
are dropped (the newest say most about the model now), counted, and the first drop is logged. The
app never waits.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque

from calmon_client.results import Counters

__all__ = ["Item", "RecordQueue"]

log = logging.getLogger("calmon_client")

Item = tuple[int, str, bytes]  # (sequence number, path, the record as JSON)


class RecordQueue:
    def __init__(self, capacity: int, max_bytes: int, counters: Counters):
        if capacity < 1 or max_bytes < 1:
            raise ValueError("max_queue and max_queue_bytes must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        self._counters = counters
        self._warned = False

    def put(self, path: str, body: bytes) -> int:
        """Append; the queue's length after it (the caller wakes the sender on a full batch)."""
        item = (next(self._sequence), path, body)
        dropped = 0
        with self._lock:
            self._items.append(item)
            self.bytes += len(body)
            while len(self._items) > self.capacity or (self.bytes > self.max_bytes and len(self._items) > 1):
                self.bytes -= len(self._items.popleft()[2])
                dropped += 1
            length = len(self._items)
        if dropped:
            self._counters.add(dropped=dropped)
            if not self._warned:
                self._warned = True
                log.warning(
                    "calmon_client: queue full (%d records or %d bytes); dropping the oldest",
                    self.capacity,
                    self.max_bytes,
                )
        return length

    def take(self, limit: int) -> list[Item]:
        with self._lock:
            items = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
            self.bytes -= sum(len(item[2]) for item in items)
            return items

    def mark(self) -> int:
        """A sequence number after every record put so far (what ``flush()`` waits past)."""
        return next(self._sequence)

    def oldest(self) -> int | None:
        with self._lock:
            return self._items[0][0] if self._items else None

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self.bytes = 0
            return count

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
