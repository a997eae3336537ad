"""For operators and orchestrators: ``/metrics``, ``/healthz`` (process up), ``/readyz`` (database)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from monitor import __version__
from monitor.collector.deps import AuthDep, ContextDep, EngineDep, SettingsDep
from monitor.collector.errors import STORE_DOWN, JSONResponse, error
from monitor.collector.responses import Health, Ready
from monitor.collector.schemas import ErrorResponse
from monitor.store.engine import ping
from monitor.store.migrate import current_revision, head_revision

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request, ctx: ContextDep, settings: SettingsDep, auth: AuthDep) -> Response:
    if settings.auth.protect_metrics:
        auth.authorize(request.headers.get("authorization"), "read")
    return Response(ctx.render_metrics(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": ErrorResponse}},
    summary="The database is reachable and migrated",
)
def readyz(engine: EngineDep) -> Response:
    try:
        ping(engine)
        revision = current_revision(engine)
    except STORE_DOWN as exc:
        return error(503, f"database unreachable: {type(exc).__name__}")
    expected = head_revision()
    if revision != expected:
        return error(503, f"schema at revision {revision}, expected {expected}; run `calmon db upgrade`")
    return JSONResponse({"status": "ready", "schema_revision": revision})
