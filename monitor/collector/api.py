"""The FastAPI application, assembled by ``create_app`` from explicit parts and the resource routers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine
from starlette.responses import Response

from monitor import __version__
from monitor.collector import apidocs
from monitor.collector.auth import Authenticator
from monitor.collector.deps import Context
from monitor.collector.errors import JSONResponse, Throttled, error, install_handlers
from monitor.collector.routes import ROUTERS
from monitor.collector.schemas import CalibrateBatch, FeedbackBatch, PredictionBatch
from monitor.collector.services import Notify, Services
from monitor.collector.serving import IdentityScorer, Scorer
from monitor.collector.sketches import SketchBatchIn
from monitor.config import Settings
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.recalibration.service import RecalibrationTrigger
from monitor.telemetry import ServiceMetrics

__all__ = ["create_app"]

log = logging.getLogger("calmon.collector")

# Routes that read their own body (to report per-record errors) still publish its schema.
REQUEST_BODIES: dict[str, type[Any]] = {
    "/v1/predictions": PredictionBatch,
    "/v1/feedback": FeedbackBatch,
    "/v1/calibrate": CalibrateBatch,
    "/v1/sketches": SketchBatchIn,
}


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    scorer: Scorer | None = None,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
    metrics: ServiceMetrics | None = None,
    snapshots: SnapshotHolder | None = None,
    render_metrics: Callable[[], bytes] | None = None,
    recalibrator: RecalibrationTrigger | None = None,
    notify: Notify = lambda *args: None,
) -> FastAPI:
    """The API over an engine whose schema is already migrated.

    ``registry``/``metrics``/``snapshots`` are shared with the scheduler and exporter by the daemon
    (``app.build``); when omitted the app gets fresh ones of its own. ``render_metrics`` produces the
    ``/metrics`` body (the daemon's Exposition); by default the registry alone.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = metrics if metrics is not None else ServiceMetrics(registry)
    snapshots = snapshots if snapshots is not None else SnapshotHolder()
    scorer = scorer or IdentityScorer()
    app = FastAPIOffline(  # /docs and /redoc from packaged, pinned assets: they work offline
        title="calmon",
        version=__version__,
        description="Calibration monitoring for LLM and classifier confidence scores.",
        default_response_class=JSONResponse,
        redoc_url=None,  # collector.apidocs serves it, without the bundle's one remote logo
    )
    app.state.context = Context(
        settings=settings,
        engine=engine,
        scorer=scorer,
        clock=clock,
        metrics=metrics,
        snapshots=snapshots,
        auth=Authenticator(settings.auth),
        services=Services(settings, engine, scorer, metrics, snapshots, clock, notify),
        render_metrics=render_metrics if render_metrics is not None else (lambda: generate_latest(registry)),
        recalibrator=recalibrator,
    )
    _enforce_deadline(app, settings.database.request_timeout_seconds)
    _time_requests(app, metrics)
    install_handlers(app, metrics)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(apidocs.router)
    _document_bodies(app, REQUEST_BODIES)
    return app


def _time_requests(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.middleware("http")
    async def _timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.request_duration.labels(request.method, path, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response


# Routes that may legitimately run longer than a request deadline: a manual recalibration fits
# models synchronously (its database work is bounded by the pool and statement timeouts).
NO_DEADLINE = ("/recalibrate",)


def _enforce_deadline(app: FastAPI, seconds: float) -> None:
    """Answer 503 + Retry-After when a request is not done within ``seconds``.

    A frozen database server (SIGSTOP, a stalled disk) accepts TCP but never answers, so neither
    the connect timeout nor a server-side statement timeout fires. The request's worker thread is
    left to finish when the server wakes; the caller is answered now. The pool timeout keeps later
    requests from queueing behind the stuck connections.
    """

    throttle = Throttled()

    @app.middleware("http")
    async def _deadline(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.endswith(NO_DEADLINE):
            return await call_next(request)
        task = asyncio.ensure_future(call_next(request))
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if task in done:
            return task.result()
        task.add_done_callback(_discard)
        task.cancel()
        suppressed = throttle.allow()
        if suppressed is not None:
            extra = {"path": request.url.path, "suppressed": suppressed}
            log.warning("request deadline passed; answering 503", extra=extra)
        return error(
            503,
            f"no answer within {seconds:g} s (database stalled?); retry later",
            headers={"Retry-After": "5"},
        )


def _discard(task: asyncio.Future[Response]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned request's late failure is not an unhandled error


def _document_bodies(app: FastAPI, bodies: dict[str, type[Any]]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body_schema.pop("$defs", {}))
            components[model.__name__] = body_schema
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
                },
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
