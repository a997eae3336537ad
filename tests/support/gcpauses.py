"""When the interpreter's garbage collector ran, to tell its pauses apart from a call's own time."""

from __future__ import annotations

import gc
import time


class GcPauses:
    """Records every collection's span (``gc.callbacks``) until ``stop()``; times in perf_counter s."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._record)

    def _record(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spans.append((self._start, time.perf_counter()))

    def overlap(self, start: float, end: float) -> float:
        """Seconds of collection within [start, end]."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.spans)

    def stop(self) -> None:
        gc.callbacks.remove(self._record)
