"""Error responses and the handlers that map failures to them (never a 5xx for a client's mistake).

Every error body is ``{"error": message, "field": name}`` (plus ``rejected`` for a batch in which
every record failed): the field names what to fix, the record index where there is one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from monitor.collector.auth import AuthError
from monitor.collector.schemas import CONFIDENCE_FIELDS, Rejection
from monitor.collector.validation import BatchError
from monitor.store.engine import UNAVAILABLE
from monitor.telemetry import ServiceMetrics

__all__ = [
    "REASONS",
    "STORE_DOWN",
    "UNKNOWN_FIELD",
    "ApiError",
    "JSONResponse",
    "Throttled",
    "count_rejections",
    "error",
    "install_handlers",
    "read_body",
    "rejection_reason",
]

log = logging.getLogger("calmon.collector")
STORE_DOWN = UNAVAILABLE  # the drivers' own errors included (``store.engine``)


class ApiError(Exception):
    """A request calmon cannot serve, with the status and the field to blame (raised by services)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class JSONResponse(StarletteJSONResponse):
    """orjson-rendered JSON; a subclass of Starlette's, so the OpenAPI document shows each route's
    response model (a plain ``Response`` subclass is documented as a string)."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            # A lone surrogate from a leniently parsed body: orjson refuses it, ASCII JSON escapes it.
            return json.dumps(content, ensure_ascii=True, default=str).encode()


def error(
    status: int,
    message: str,
    field: str | None = None,
    rejected: list[Rejection] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "field": field}
    if rejected is not None:
        body["rejected"] = [r.model_dump() for r in rejected]
    return JSONResponse(body, status_code=status, headers=headers)


# Content types a browser may send cross-origin without a CORS preflight. A JSON API that accepted
# them would let any web page post to a local, token-less daemon (a CSRF).
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def refuse_simple_requests(request: Request) -> None:
    """A dependency for POST routes without a body: refuse what a cross-site form could send."""
    if media_type(request) in SIMPLE_CONTENT_TYPES:
        raise BatchError(415, "content-type", f"{media_type(request)} is not accepted; send no body or JSON")


async def read_body(request: Request, limit: int) -> bytes:
    """The JSON request body, refusing another content type (415) and, as soon as it exceeds
    ``limit`` bytes, a larger one (413)."""
    if media_type(request) != "application/json":
        raise BatchError(
            415, "content-type", "the body must be JSON sent as 'Content-Type: application/json'"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BatchError(413, "body", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BatchError(413, "body", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# The label values of calmon_rejected_records_total{reason}: the API's own field names, and one
# value for anything a client invented (an unknown field name must not become a label value).
REASONS = frozenset(
    {"model", "id", "segment", "ts", "predicted", "correct", "label", *CONFIDENCE_FIELDS}
    | {"record", "body", "predictions", "feedback", "records", "content-type"}
)
UNKNOWN_FIELD = "unknown_field"


def rejection_reason(field: str | None) -> str:
    name = (field or "body").split("[", 1)[0]
    return name if name in REASONS else UNKNOWN_FIELD


def count_rejections(metrics: ServiceMetrics, rejected: list[Rejection]) -> None:
    for rejection in rejected:
        metrics.rejected.labels(rejection_reason(rejection.field)).inc()


class Throttled:
    """At most one log line per ``interval`` seconds, saying how many were folded into it: an
    outage answers thousands of requests a second with 503, and the log must stay readable."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last = -math.inf
        self._suppressed = 0

    def allow(self) -> int | None:
        """None to stay quiet; else how many occurrences were suppressed since the last line."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval:
                self._suppressed += 1
                return None
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
            return suppressed


def install_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Auth, batch, request-shape and database-down errors as JSON error bodies."""

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error(exc.status, exc.message, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error(exc.status, exc.message, exc.field)

    @app.exception_handler(BatchError)
    async def _batch_error(request: Request, exc: BatchError) -> Response:
        if exc.rejected:
            count_rejections(metrics, exc.rejected)
        else:
            metrics.rejected.labels(rejection_reason(exc.field)).inc()
        return error(exc.status, exc.message, exc.field, exc.rejected)

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        return error(422, str(first.get("msg")), ".".join(loc) or None)

    throttle = Throttled()
    for kind in STORE_DOWN:

        @app.exception_handler(kind)
        async def _store_down(request: Request, exc: Exception) -> Response:
            suppressed = throttle.allow()
            if suppressed is not None:
                extra = {"path": request.url.path, "error": type(exc).__name__, "suppressed": suppressed}
                log.warning("database unavailable; answering 503", extra=extra)
            return error(503, "database unavailable; retry later", headers={"Retry-After": "5"})
