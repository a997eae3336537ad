"""Error responses and the handlers that map failures to them (never a 5xx for a client's mistake).

Every error body is ``{"error": message, "field": name}`` (plus ``rejected`` for a batch in which
every record failed): the field names what to fix, the record index where there is one.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.responses import Response

from monitor.collector.auth import AuthError
from monitor.collector.schemas import Rejection
from monitor.collector.validation import BatchError
from monitor.telemetry import ServiceMetrics

__all__ = [
    "STORE_DOWN",
    "ApiError",
    "JSONResponse",
    "count_rejections",
    "error",
    "install_handlers",
    "read_body",
]

log = logging.getLogger("calmon.collector")
STORE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)


class ApiError(Exception):
    """A request calmon cannot serve, with the status and the field to blame (raised by services)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it exceeds ``limit`` bytes."""
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


def count_rejections(metrics: ServiceMetrics, rejected: list[Rejection]) -> None:
    for rejection in rejected:
        metrics.rejected.labels(rejection.field.split("[", 1)[0]).inc()


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
            metrics.rejected.labels(exc.field).inc()
        return error(exc.status, exc.message, exc.field, exc.rejected)

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        return error(422, str(first.get("msg")), ".".join(loc) or None)

    for kind in STORE_DOWN:

        @app.exception_handler(kind)
        async def _store_down(request: Request, exc: Exception) -> Response:
            log.warning("database unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
            return error(503, "database unavailable; retry later", headers={"Retry-After": "5"})
