"""Delivering a drained batch, without doing any I/O ("sans-IO").

The sync and the async client share this logic and differ only in how they send a request and
sleep: a ``Delivery`` says which request goes next and, after each answer or transport error, how
long to wait before the next one. It decides what is retried (transport errors, 408/425/429/5xx,
honouring ``Retry-After``), what is split (413), and what is given up (other 4xx: calmon refused the
records; retrying cannot help). Retrying is safe because calmon de-duplicates by ``(model, id)``.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from calmon_client.results import Counters

__all__ = ["FEEDBACK", "PREDICTION", "Delivery", "OnceLog", "RetryPolicy", "retry_after"]

log = logging.getLogger("calmon_client")

PREDICTION = "/v1/predictions"
FEEDBACK = "/v1/feedback"
_KEYS = {PREDICTION: b"predictions", FEEDBACK: b"feedback"}
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(max_backoff, initial * multiplier**(n-1))``, and never less than calmon's ``Retry-After``
    (itself capped at ``max_retry_after``)."""

    initial: float = 0.2
    multiplier: float = 2.0
    max_backoff: float = 10.0
    max_retry_after: float = 60.0

    def wait(self, attempt: int, after: float | None = None) -> float:
        cap = min(self.max_backoff, self.initial * self.multiplier ** max(0, attempt - 1))
        backoff = random.uniform(cap / 2, cap)
        return max(backoff, min(after, self.max_retry_after)) if after is not None else backoff


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent or bad."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


class OnceLog:
    """Logs each kind of trouble once per client (bounded), and an outage once when it begins and
    once when it ends, so an outage or a stream of bad records cannot flood the app's log."""

    def __init__(self, limit: int = 64):
        self._seen: set[str] = set()
        self._limit = limit
        self._failures = 0  # consecutive failed requests: > 0 during an outage

    def unavailable(self, what: str) -> None:
        self._failures += 1
        if self._failures == 1:
            log.warning("calmon_client: calmon unavailable (%s); keeping the records and retrying", what)

    def available(self) -> None:
        if self._failures:
            log.warning("calmon_client: calmon reachable again after %d failed requests", self._failures)
        self._failures = 0

    def warning(self, key: str, message: str, *args: Any) -> None:
        if key in self._seen or len(self._seen) >= self._limit:
            return
        self._seen.add(key)
        log.warning(message, *args)


@dataclass
class _Chunk:
    path: str
    parts: list[bytes]

    def body(self) -> bytes:
        return b'{"' + _KEYS[self.path] + b'":[' + b",".join(self.parts) + b"]}"


class Delivery:
    """One drained batch on its way: predictions first, then feedback."""

    def __init__(
        self,
        items: Iterable[tuple[str, bytes]],
        counters: Counters,
        once: OnceLog,
        policy: RetryPolicy,
    ):
        self._counters = counters
        self._once = once
        self._policy = policy
        self.attempt = 0  # failed attempts of the current request
        parts: dict[str, list[bytes]] = {PREDICTION: [], FEEDBACK: []}
        for path, body in items:
            parts[path].append(body)
        self._chunks = deque(_Chunk(path, p) for path, p in parts.items() if p)

    @property
    def done(self) -> bool:
        return not self._chunks

    def request(self) -> tuple[str, bytes]:
        """The path and body to send next (only when not ``done``)."""
        chunk = self._chunks[0]
        return chunk.path, chunk.body()

    def answered(self, status: int, headers: Mapping[str, str], body: bytes) -> float:
        """Account for calmon's answer; the seconds to wait before the next request."""
        chunk = self._chunks[0]
        if 200 <= status < 300:
            self._acknowledged(chunk, body)
            return 0.0
        if status == 413 and len(chunk.parts) > 1:  # too big for this calmon's limits: halve it
            half = len(chunk.parts) // 2
            self._chunks.popleft()
            self._chunks.extendleft(
                [_Chunk(chunk.path, chunk.parts[half:]), _Chunk(chunk.path, chunk.parts[:half])]
            )
            return 0.0
        if status in _RETRYABLE or status >= 500:
            return self._retry(f"HTTP {status}", retry_after(headers))
        self._chunks.popleft()
        self._once.available()
        self.attempt = 0
        self._counters.add(rejected=len(chunk.parts))
        self._once.warning(
            f"refused:{chunk.path}:{status}",
            "calmon_client: calmon refused %d records on %s with HTTP %d (not retried): %s",
            len(chunk.parts),
            chunk.path,
            status,
            _error(body),
        )
        return 0.0

    def failed(self, error: Exception) -> float:
        """A transport error (refused, reset, timed out): retry after a backoff."""
        return self._retry(f"{type(error).__name__}: {error}", None)

    def abandon(self, reason: str) -> int:
        """Give up on what is left (``close()`` ran out of time); the records are counted as dropped."""
        left = sum(len(chunk.parts) for chunk in self._chunks)
        self._chunks.clear()
        if left:
            self._counters.add(dropped=left)
            self._once.warning(
                f"abandon:{reason}", "calmon_client: dropped %d records not delivered (%s)", left, reason
            )
        return left

    def _retry(self, what: str, after: float | None) -> float:
        self.attempt += 1
        self._counters.add(retries=1)
        self._once.unavailable(what)
        return self._policy.wait(self.attempt, after)

    def _acknowledged(self, chunk: _Chunk, body: bytes) -> None:
        self._chunks.popleft()
        self._once.available()
        self.attempt = 0
        try:
            answer = json.loads(body)
            rejected = answer.get("rejected") or []
        except (ValueError, AttributeError):
            answer, rejected = {}, []
        if chunk.path == PREDICTION:
            duplicates = int(answer.get("duplicates", 0))
        else:
            duplicates = int(answer.get("duplicates", 0)) + int(answer.get("conflicts", 0))
        self._counters.add(
            delivered=len(chunk.parts) - len(rejected), duplicates=duplicates, rejected=len(rejected)
        )
        if rejected:
            first = rejected[0]
            self._once.warning(
                f"rejected:{chunk.path}:{first.get('field')}",
                "calmon_client: calmon rejected %d records on %s, e.g. %s",
                len(rejected),
                chunk.path,
                first,
            )


def _error(body: bytes) -> str:
    try:
        answer = json.loads(body)
        return f"{answer.get('error')} (field {answer.get('field')}, index {answer.get('index')})"
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
