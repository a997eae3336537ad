"""The API's two wrappers around every request: its duration metric and its deadline.

Plain ASGI, not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the endpoint in
a task group and streams its response through a memory channel, and the two layers cost ~2 ms of
daemon CPU per 1000-record ingest request, 15% of it (benchmarks/RESULTS.md, "Series index on
arrival"). Here a request is one call of the app with ``send`` wrapped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.collector.errors import Throttled, error
from monitor.telemetry import ServiceMetrics

__all__ = ["Deadline", "RequestTiming"]

log = logging.getLogger("calmon.collector")


class RequestTiming:
    """``calmon_http_request_duration_seconds`` per method, route template and status.

    The route is read after the app ran (the router records it in the shared scope), so an unmatched
    path is one label value, ``unmatched``, whatever clients send."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before starting a response

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_duration.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - started
            )


class Deadline:
    """Answer 503 + Retry-After when a request has not started its answer within ``seconds``.

    A frozen database server (SIGSTOP, a stalled disk) accepts TCP but never answers, so neither
    the connect timeout nor a server-side statement timeout fires. The request's worker thread is
    left to finish when the server wakes (its late answer is dropped); the caller is answered now.
    The pool timeout keeps later requests from queueing behind the stuck connections. A response
    already started is never cut: the deadline is for the answer's first byte.
    """

    def __init__(self, app: ASGIApp, seconds: float, exempt: Callable[[str], bool]):
        self.app = app
        self.seconds = seconds
        self.exempt = exempt
        self.throttle = Throttled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        answered = asyncio.Event()
        abandoned = False

        async def guarded_send(message: Message) -> None:
            if abandoned:
                return  # the caller has had its 503
            answered.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        waiter = asyncio.ensure_future(answered.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=self.seconds, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping or the client left: so does the request
            task.add_done_callback(_discard)
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if answered.is_set() or task.done():
            await task  # the answer is on its way (or the app failed: its error propagates)
            return
        abandoned = True
        task.add_done_callback(_discard)
        task.cancel()
        suppressed = self.throttle.allow()
        if suppressed is not None:
            log.warning(
                "request deadline passed; answering 503",
                extra={"path": scope["path"], "suppressed": suppressed},
            )
        message = f"no answer within {self.seconds:g} s (database stalled?); retry later"
        response = error(503, message, headers={"Retry-After": "5"})
        await response(scope, receive, send)


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned request's late failure is not an unhandled error
