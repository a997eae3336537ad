"""The synchronous client: logging never waits for the network; a background thread delivers.

``log_prediction`` and ``log_feedback`` put a record on a bounded queue and return (microseconds).
A daemon thread sends batches when ``batch_size`` records wait or every ``flush_interval`` seconds,
retrying while calmon is unreachable. ``close()`` (also run at interpreter exit) delivers what it
can within its timeout. After ``os.fork()`` the child starts with an empty queue and its own thread.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from calmon_client.core import CALIBRATE, JSON_HEADERS, ClientCore, InlineAnswer
from calmon_client.delivery import FEEDBACK, PREDICTION, Delivery, RetryPolicy, log
from calmon_client.queue import Item
from calmon_client.records import Aggregation, feedback_record, prediction_record, score_record
from calmon_client.results import Calibrated

__all__ = ["Client"]


class Client(ClientCore):
    """Log predictions and labels to calmon from any thread; calibrate inline when you act on a score.

    ``timeout`` bounds a background request, ``calibrate_timeout`` an inline one (then the raw score
    is returned as ``Calibrated(fallback=True)`` and inline calls skip calmon for ``breaker_seconds``).
    ``max_queue`` records and ``max_queue_bytes`` bound memory: beyond either, the oldest records are
    dropped and counted.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue: int = 100_000,
        max_queue_bytes: int = 64 * 2**20,
        timeout: float = 10.0,
        calibrate_timeout: float = 0.5,
        breaker_seconds: float = 5.0,
        retry: RetryPolicy | None = None,
        token_aggregation: Aggregation = "mean",  # noqa: S107 (not a secret)
        flush_at_exit: float | None = 5.0,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(
            url,
            token,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            timeout=timeout,
            calibrate_timeout=calibrate_timeout,
            breaker_seconds=breaker_seconds,
            retry=retry,
            token_aggregation=token_aggregation,
        )
        self._transport = transport
        self._http = self._new_http()
        self._wake = threading.Event()  # a full batch waits, flush() or close() was called
        self._stop = threading.Event()  # close(): cut backoff sleeps short
        self._progress = threading.Condition()
        self._closed = False
        self._thread = self._start()
        self._exit_timeout = flush_at_exit
        if flush_at_exit is not None:
            atexit.register(self._at_exit)
        _FORKED.add(self)

    # ------------------------------------------------------------------------------ app side
    @overload
    def log_prediction(
        self,
        model: str,
        id: str,
        *,
        confidence: float | None = ...,
        probs: Sequence[float] | None = ...,
        logits: Sequence[float] | None = ...,
        token_logprobs: Sequence[float] | None = ...,
        segment: str | None = ...,
        ts: float | datetime | None = ...,
        predicted: str | int | None = ...,
        wait: Literal[False] = ...,
    ) -> None: ...
    @overload
    def log_prediction(
        self,
        model: str,
        id: str,
        *,
        confidence: float | None = ...,
        probs: Sequence[float] | None = ...,
        logits: Sequence[float] | None = ...,
        token_logprobs: Sequence[float] | None = ...,
        segment: str | None = ...,
        ts: float | datetime | None = ...,
        predicted: str | int | None = ...,
        wait: Literal[True],
        target: float | None = ...,
    ) -> Calibrated: ...
    def log_prediction(
        self,
        model: str,
        id: str,
        *,
        confidence: float | None = None,
        probs: Sequence[float] | None = None,
        logits: Sequence[float] | None = None,
        token_logprobs: Sequence[float] | None = None,
        segment: str | None = None,
        ts: float | datetime | None = None,
        predicted: str | int | None = None,
        wait: bool = False,
        target: float | None = None,
    ) -> Calibrated | None:
        """Log one prediction (``ts`` defaults to now: the prediction time, not the delivery time).

        With ``wait=True`` the record is sent now and its calibrated confidence returned; if calmon
        does not answer within ``calibrate_timeout`` the record is queued and the raw score returned.
        With ``target`` (a configured advice target precision) too, calmon's ``action``: "accept" or
        "review" ("review" when calmon could not be asked).
        """
        record = prediction_record(
            model,
            id,
            time.time() if ts is None else ts,
            segment,
            predicted,
            confidence,
            probs,
            logits,
            token_logprobs,
        )
        if target is not None and not wait:
            raise TypeError("target needs wait=True: the advice comes back with the calibrated confidence")
        if wait:
            return self._inline(PREDICTION, record, target)
        if self.queue_record(PREDICTION, record) and not self._wake.is_set():
            self._wake.set()
        return None

    def log_feedback(
        self, model: str, id: str, *, correct: bool | None = None, label: str | int | None = None
    ) -> None:
        """Log ground truth for a prediction (before or after the prediction itself arrives)."""
        if (
            self.queue_record(FEEDBACK, feedback_record(model, id, correct, label))
            and not self._wake.is_set()
        ):
            self._wake.set()

    def calibrate(
        self,
        model: str,
        *,
        confidence: float | None = None,
        probs: Sequence[float] | None = None,
        logits: Sequence[float] | None = None,
        token_logprobs: Sequence[float] | None = None,
        segment: str | None = None,
        predicted: str | int | None = None,
        target: float | None = None,
    ) -> Calibrated:
        """The calibrated confidence of a score, without logging it (raw score as fallback). With a
        ``target`` precision, also calmon's advice: ``action`` "accept" or "review"."""
        record = score_record(model, segment, predicted, confidence, probs, logits, token_logprobs)
        return self._inline(CALIBRATE, record, target)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver everything logged so far; False if that did not finish within ``timeout``."""
        mark = self.queue.mark()
        self._wake.set()
        end = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while not self.drained(mark):
                left = None if end is None else end - time.monotonic()
                if (left is not None and left <= 0) or not self._thread.is_alive():
                    return False
                self._progress.wait(0.05 if left is None else min(left, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop; the rest is dropped
        (counted in ``stats().dropped`` and logged)."""
        if self._closed:
            return
        self._closed = True
        self.deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 1.0)
        left = self.queue.clear()
        if left:
            self.counters.add(dropped=left)
            log.warning("calmon_client: closed with %d records not delivered", left)
        self._http.close()
        atexit.unregister(self._at_exit)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------ sender
    def _new_http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=self._transport
        )

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="calmon-client-sender", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while not self.past_deadline() and (items := self.queue.take(self.batch_size)):
                self._deliver(items)
            with self._progress:
                self._progress.notify_all()
            if self._stop.is_set():
                return

    def _deliver(self, items: list[Item]) -> None:
        self.in_flight = items[0][0]
        delivery = Delivery(
            ((path, record) for _, path, record in items), self.counters, self.once, self.policy
        )
        try:
            while not delivery.done:
                path, body = delivery.request()
                try:
                    response = self._http.post(
                        path, content=body, headers=JSON_HEADERS, timeout=self.budget()
                    )
                except httpx.HTTPError as exc:
                    wait = delivery.failed(exc)
                else:
                    wait = delivery.answered(response.status_code, response.headers, response.content)
                self.counters.add(requests=1)
                if wait and self.past_deadline(wait):
                    self.deadline = time.monotonic()  # give up on the rest too: close() counts it
                    delivery.abandon("close() timed out while calmon was unavailable")
                elif wait and self.deadline is None:
                    self._stop.wait(wait)  # close() cuts the backoff short: one more try at once
                elif wait:
                    time.sleep(wait)  # closing: a real backoff (the stop event is set for good)
        except Exception:  # a defect here must not silently stop delivery for the process's life
            log.exception("calmon_client: unexpected error while delivering; dropping the batch")
            delivery.abandon("unexpected error")
        finally:
            with self._progress:
                self.in_flight = None
                self._progress.notify_all()

    def _inline(self, path: str, record: dict[str, Any], target: float | None = None) -> Calibrated:
        prepared = self.inline_request(path, record, target)
        if isinstance(prepared, InlineAnswer):
            answer = prepared
        else:
            try:
                response = self._http.post(
                    path,
                    content=prepared,
                    headers=JSON_HEADERS,
                    timeout=self.calibrate_timeout,
                    params={"target": target} if target is not None else None,
                )
            except httpx.HTTPError as exc:
                answer = self.unreachable(record, exc, target)
            else:
                answer = self.inline_answer(
                    path, record, response.status_code, response.headers, response.content, target
                )
        if answer.retry and path == PREDICTION and self.queue_record(path, record):
            self._wake.set()
        return answer.calibrated

    def _at_exit(self) -> None:
        self.close(self._exit_timeout or 0.0)

    def _after_fork_in_child(self) -> None:
        """The parent's thread and connections do not exist in the child; its records are the parent's."""
        self.queue.reset_after_fork()
        self.in_flight = None
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        if not self._closed:
            self._http = self._new_http()
            self._thread = self._start()


_FORKED: weakref.WeakSet[Client] = weakref.WeakSet()


def _reinit_children() -> None:
    for client in list(_FORKED):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_children)
