"""What the sync and the async client share: settings, the queue, counters, and reading answers.

Only sending and waiting differ between ``Client`` (a background thread) and ``AsyncClient`` (a
background task); both subclass ``ClientCore`` and keep their I/O to a few short methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from calmon_client.delivery import PREDICTION, OnceLog, RetryPolicy
from calmon_client.queue import RecordQueue
from calmon_client.records import Aggregation, encode, raw_confidence
from calmon_client.results import Calibrated, ClientStats, Counters

__all__ = ["CALIBRATE", "JSON_HEADERS", "Breaker", "ClientCore", "InlineAnswer"]

CALIBRATE = "/v1/calibrate"
JSON_HEADERS = {"content-type": "application/json"}
_RETRYABLE = {408, 425, 429}


class Breaker:
    """After calmon failed to answer an inline call, skip inline calls for ``seconds``: an app that
    calibrates on its request path must not pay the timeout on every request during an outage."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._open_until = 0.0

    def open(self) -> bool:
        return time.monotonic() < self._open_until

    def trip(self) -> None:
        self._open_until = time.monotonic() + self.seconds


class InlineAnswer:
    """How an inline call (calibrate, or log with ``wait=True``) ended."""

    def __init__(self, calibrated: Calibrated, retry: bool):
        self.calibrated = calibrated
        self.retry = retry  # calmon did not answer: a logged record goes to the background queue


class ClientCore:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        max_queue_bytes: int,
        timeout: float,
        calibrate_timeout: float,
        breaker_seconds: float,
        retry: RetryPolicy | None,
        token_aggregation: Aggregation,
    ):
        if batch_size < 1 or flush_interval <= 0 or timeout <= 0 or calibrate_timeout <= 0:
            raise ValueError("batch_size, flush_interval, timeout and calibrate_timeout must be positive")
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.calibrate_timeout = calibrate_timeout
        self.policy = retry or RetryPolicy()
        self.aggregation = token_aggregation
        self.counters = Counters()
        self.once = OnceLog()
        self.queue = RecordQueue(max_queue, max_queue_bytes, self.counters)
        self.breaker = Breaker(breaker_seconds)
        self.in_flight: int | None = None  # sequence number of the oldest record being delivered
        self.deadline: float | None = None  # monotonic time at which close() gives up

    def stats(self) -> ClientStats:
        """Counters of what happened to every record logged so far."""
        return self.counters.snapshot(queued=len(self.queue) + (self.in_flight is not None))

    def drained(self, mark: int) -> bool:
        """Everything put before ``mark`` has been delivered, refused or dropped."""
        oldest = self.queue.oldest()
        return (self.in_flight is None or self.in_flight > mark) and (oldest is None or oldest > mark)

    def past_deadline(self, after: float = 0.0) -> bool:
        return self.deadline is not None and time.monotonic() + after >= self.deadline

    def budget(self) -> float:
        """A background request's timeout: ``timeout``, cut to what is left of ``close()``'s."""
        if self.deadline is None:
            return self.timeout
        return max(0.05, min(self.timeout, self.deadline - time.monotonic()))

    def fallback(self, record: dict[str, Any], reason: str, target: float | None = None) -> Calibrated:
        raw = raw_confidence(record, self.aggregation)
        return Calibrated(raw, raw, None, fallback=True, reason=reason, action="review" if target else None)

    def inline_request(
        self, path: str, record: dict[str, Any], target: float | None = None
    ) -> InlineAnswer | bytes:
        """The body of a one-record inline call, or the answer without asking (the breaker is open).
        A record JSON cannot hold is a ValueError here: the caller waits for this answer."""
        if self.breaker.open():
            return InlineAnswer(
                self.fallback(record, "calmon unreachable moments ago; not asked", target), retry=True
            )
        key = b"predictions" if path == PREDICTION else b"records"
        try:
            return b'{"' + key + b'":[' + encode(record) + b"]}"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"record is not JSON: {exc}") from exc

    def inline_answer(
        self,
        path: str,
        record: dict[str, Any],
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        target: float | None = None,
    ) -> InlineAnswer:
        """Read calmon's answer to a one-record inline call."""
        if status in _RETRYABLE or status >= 500:
            self.breaker.trip()
            return InlineAnswer(self.fallback(record, f"calmon answered HTTP {status}", target), retry=True)
        try:
            answer = json.loads(body)
            results = answer.get("results") or []
            rejected = answer.get("rejected") or []
        except (ValueError, AttributeError):
            answer, results, rejected = {}, [], []
        if status != 200 or not results:
            if path == PREDICTION:
                self.counters.add(rejected=1)
            why = rejected[0] if rejected else {"error": answer.get("error"), "field": answer.get("field")}
            self.once.warning(
                f"inline:{path}:{why.get('field')}",
                "calmon_client: calmon refused a record on %s: %s",
                path,
                why,
            )
            return InlineAnswer(
                self.fallback(record, f"calmon refused the record: {why.get('error')}", target), False
            )
        result = results[0]
        if path == PREDICTION:
            self.counters.add(delivered=1, duplicates=int(bool(result.get("duplicate"))))
        raw = (
            result["raw_confidence"]
            if "raw_confidence" in result
            else raw_confidence(record, self.aggregation)
        )
        threshold = result.get("threshold")
        calibrated = Calibrated(
            float(result["calibrated_confidence"]),
            float(raw),
            str(result["calibrator_version"]),
            action=result.get("action"),
            threshold=float(threshold) if threshold is not None else None,
            reason=result.get("advice_reason"),
        )
        return InlineAnswer(calibrated, retry=False)

    def unreachable(
        self, record: dict[str, Any], error: Exception, target: float | None = None
    ) -> InlineAnswer:
        self.breaker.trip()
        return InlineAnswer(
            self.fallback(record, f"calmon unreachable: {type(error).__name__}", target), retry=True
        )

    def queue_record(self, path: str, record: dict[str, Any]) -> bool:
        """Queue a record, encoded now (a record JSON cannot hold, NaN say, is counted as rejected
        and logged once, never raised into the app); True when a full batch waits (wake the sender)."""
        try:
            body = encode(record)
        except (TypeError, ValueError) as exc:
            self.counters.add(rejected=1)
            self.once.warning(
                f"encode:{path}",
                "calmon_client: dropped a record that is not JSON (%s): %s",
                exc,
                {k: record.get(k) for k in ("model", "id")},
            )
            return False
        return self.queue.put(path, body) >= self.batch_size
