"""The bounded in-memory queue between the app's threads and the sender.

Full means the sender cannot keep up or calmon is down for long: the oldest record is dropped (the
newest says most about the model now), counted, and the first drop is logged. The app never waits.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import Any

from calmon_client.results import Counters

__all__ = ["Item", "RecordQueue"]

log = logging.getLogger("calmon_client")

Item = tuple[int, str, dict[str, Any]]  # (sequence number, path, record)


class RecordQueue:
    def __init__(self, capacity: int, counters: Counters):
        if capacity < 1:
            raise ValueError("max_queue must be at least 1")
        self.capacity = capacity
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        self._counters = counters
        self._warned = False

    def put(self, path: str, record: dict[str, Any]) -> int:
        """Append; the queue's length after it (the caller wakes the sender on a full batch)."""
        item = (next(self._sequence), path, record)
        with self._lock:
            if len(self._items) >= self.capacity:
                self._items.popleft()
                dropped = True
            else:
                dropped = False
            self._items.append(item)
            length = len(self._items)
        if dropped:
            self._counters.add(dropped=1)
            if not self._warned:
                self._warned = True
                log.warning("calmon_client: queue full (%d records); dropping the oldest", self.capacity)
        return length

    def take(self, limit: int) -> list[Item]:
        with self._lock:
            return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

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
            return count

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
