"""The test harness: a settable clock, polling with a deadline, the daemon wired as in production."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine

from monitor.app import Daemon, build
from monitor.config import Settings
from monitor.exporter import Exposition
from tests.support.polling import eventually

__all__ = ["Clock", "build_daemon", "eventually", "sample"]


class Clock:
    """A clock tests move by hand (``clock.now += 60``)."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def build_daemon(
    engine: Engine, settings: Settings, clock: Callable[[], float] = time.time, instance: str = "replica-a"
) -> Daemon:
    """``monitor.app.build`` on an existing engine, with a clock and an instance id of the test's."""
    return build(settings, clock=clock, instance_id=instance, engine=engine)


def sample(metric: str, exposition: Exposition, **labels: str) -> float | None:
    """A sample's value from either part of ``/metrics`` (live registry or snapshot)."""
    value = exposition.live.get_sample_value(metric, labels)
    return value if value is not None else exposition.snapshot_registry.get_sample_value(metric, labels)
