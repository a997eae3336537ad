"""``eventually``: the one way tests wait for something, with a deadline that always fails loudly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually", "holds"]

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "the condition",
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after ``timeout``.

    Exceptions inside the predicate count as "not yet" (a server still starting), except the
    ``fatal`` ones, which end the wait at once; the last one is reported if time runs out.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except fatal:
            raise
        except Exception as exc:  # not ready yet: keep polling
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(interval)


def holds(check: Callable[[], None], duration: float, interval: float = 0.5) -> int:
    """Run ``check`` (which asserts) again and again for ``duration`` seconds: how a test shows that
    something stays true, e.g. no alert while Prometheus keeps evaluating. Returns the checks made."""
    deadline = time.monotonic() + duration
    made = 0
    while True:
        check()
        made += 1
        if time.monotonic() >= deadline:
            return made
        time.sleep(interval)
