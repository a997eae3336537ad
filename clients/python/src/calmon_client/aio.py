"""The asyncio client: the same contract as ``Client``, delivered by a task on the app's event loop.

``await log_prediction(...)`` only queues (no network) unless ``wait=True``. The sender task starts
with the first record and lives on the loop that logged it; ``await aclose()`` (or ``async with``)
delivers what is left. There is no flush at interpreter exit: the loop is gone by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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

__all__ = ["AsyncClient"]


class AsyncClient(ClientCore):
    """See ``Client``; every method is a coroutine, and the sender is a task instead of a thread."""

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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    @overload
    async def log_prediction(
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
    async def log_prediction(
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
    async def log_prediction(
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
        """See ``Client.log_prediction``."""
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
            return await self._inline(PREDICTION, record, target)
        self._put(PREDICTION, record)
        return None

    async def log_feedback(
        self, model: str, id: str, *, correct: bool | None = None, label: str | int | None = None
    ) -> None:
        self._put(FEEDBACK, feedback_record(model, id, correct, label))

    async def calibrate(
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
        record = score_record(model, segment, predicted, confidence, probs, logits, token_logprobs)
        return await self._inline(CALIBRATE, record, target)

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver everything logged so far; False if that did not finish within ``timeout``."""
        mark = self.queue.mark()
        end = None if timeout is None else time.monotonic() + timeout
        while not self.drained(mark):
            if (end is not None and time.monotonic() >= end) or self._sender is None or self._sender.done():
                return False
            self._wake.set()
            await asyncio.sleep(0.02)
        return True

    async def aclose(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop (the rest is dropped)."""
        if self._closed:
            return
        self._closed = True
        self.deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sender, timeout + 1.0)
        left = self.queue.clear()
        if left:
            self.counters.add(dropped=left)
            log.warning("calmon_client: closed with %d records not delivered", left)
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------ sender
    def _put(self, path: str, record: dict[str, Any]) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._run(), name="calmon-client-sender")
        if self.queue_record(path, record):
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            while not self.past_deadline() and (items := self.queue.take(self.batch_size)):
                await self._deliver(items)
            if self._stop.is_set():
                return

    async def _deliver(self, items: list[Item]) -> None:
        self.in_flight = items[0][0]
        delivery = Delivery(
            ((path, record) for _, path, record in items), self.counters, self.once, self.policy
        )
        try:
            while not delivery.done:
                path, body = delivery.request()
                try:
                    response = await self._http.post(
                        path, content=body, headers=JSON_HEADERS, timeout=self.budget()
                    )
                except httpx.HTTPError as exc:
                    wait = delivery.failed(exc)
                else:
                    wait = delivery.answered(response.status_code, response.headers, response.content)
                self.counters.add(requests=1)
                if wait and self.past_deadline(wait):
                    self.deadline = time.monotonic()  # give up on the rest too: close() counts it
                    delivery.abandon("aclose() timed out while calmon was unavailable")
                elif wait and self.deadline is None:
                    with contextlib.suppress(TimeoutError):  # aclose() cuts the backoff short
                        await asyncio.wait_for(self._stop.wait(), wait)
                elif wait:
                    await asyncio.sleep(wait)  # closing: a real backoff (the stop event is set for good)
        except Exception:  # keep the task alive: a defect must not stop delivery for good
            log.exception("calmon_client: unexpected error while delivering; dropping the batch")
            delivery.abandon("unexpected error")
        finally:
            self.in_flight = None

    async def _inline(self, path: str, record: dict[str, Any], target: float | None = None) -> Calibrated:
        prepared = self.inline_request(path, record, target)
        if isinstance(prepared, InlineAnswer):
            answer = prepared
        else:
            try:
                response = await self._http.post(
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
        if answer.retry and path == PREDICTION:
            self._put(path, record)
        return answer.calibrated
