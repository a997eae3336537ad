"""The FastAPI application, assembled by ``create_app`` from explicit parts and the resource routers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine

from monitor import __version__
from monitor.collector import apidocs
from monitor.collector.auth import Authenticator
from monitor.collector.deps import Context
from monitor.collector.errors import JSONResponse, install_handlers
from monitor.collector.middleware import Deadline, RequestTiming
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
    # The last added is the outermost: the duration metric also times the deadline's 503s.
    app.add_middleware(Deadline, seconds=settings.database.request_timeout_seconds, exempt=_no_deadline)
    app.add_middleware(RequestTiming, metrics=metrics)
    install_handlers(app, metrics)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(apidocs.router)
    _document_bodies(app, REQUEST_BODIES)
    return app


# Routes that may legitimately run longer than a request deadline: a manual recalibration fits
# models synchronously (its database work is bounded by the pool and statement timeouts).
NO_DEADLINE = ("/recalibrate",)


def _no_deadline(path: str) -> bool:
    return path.endswith(NO_DEADLINE)


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
