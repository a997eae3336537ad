"""The test harness: a settable clock, polling with a deadline, the daemon wired as in production."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine

from monitor.app import Daemon, build
from monitor.config import Settings
from monitor.exporter import Exposition

__all__ = ["Clock", "build_daemon", "eventually", "sample"]

T = TypeVar("T")


class Clock:
    """A clock tests move by hand (``clock.now += 60``)."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def eventually(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "the condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after ``timeout``.

    Exceptions inside the predicate count as "not yet" (a server still starting); the last one is
    reported if time runs out, so a timeout always fails loudly and says why.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # not ready yet: keep polling
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def build_daemon(
    engine: Engine, settings: Settings, clock: Callable[[], float] = time.time, instance: str = "replica-a"
) -> Daemon:
    """``monitor.app.build`` on an existing engine, with a clock and an instance id of the test's."""
    return build(settings, clock=clock, instance_id=instance, engine=engine)


def sample(metric: str, exposition: Exposition, **labels: str) -> float | None:
    """A sample's value from either part of ``/metrics`` (live registry or snapshot)."""
    value = exposition.live.get_sample_value(metric, labels)
    return value if value is not None else exposition.snapshot_registry.get_sample_value(metric, labels)
