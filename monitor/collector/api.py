"""The FastAPI application: routes, auth, error mapping. Built by ``create_app`` from explicit parts."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from monitor import __version__
from monitor.calibration.sequence import Aggregation
from monitor.collector.auth import Authenticator, AuthError
from monitor.collector.schemas import (
    CalibrateBatch,
    ErrorResponse,
    FeedbackBatch,
    FeedbackResponse,
    PredictionBatch,
    PredictionResponse,
    Rejection,
)
from monitor.collector.serving import IdentityScorer, RegistryScorer, Scorer
from monitor.collector.validation import (
    BatchError,
    parse_body,
    prepare_calibration,
    prepare_feedback,
    prepare_predictions,
)
from monitor.config import Scope, Settings
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.evaluation.windows import WindowStats
from monitor.store import calibrators as calibrator_store
from monitor.store.engine import READ_ONLY
from monitor.store.events import list_events
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.migrate import current_revision, head_revision
from monitor.store.queries import ModelCounts, active_calibrators, model_counts
from monitor.store.records import PredictionRow
from monitor.telemetry import ServiceMetrics

log = logging.getLogger("calmon.collector")
STORE_DOWN = (OperationalError, InterfaceError, PoolTimeoutError)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(
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


def create_app(
    settings: Settings,
    engine: Engine,
    scorer: Scorer | None = None,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
    metrics: ServiceMetrics | None = None,
    snapshots: SnapshotHolder | None = None,
    render_metrics: Callable[[], bytes] | None = None,
    recalibrate: Callable[..., Any] | None = None,
    load_report: Callable[[int], tuple[dict[str, Any], str] | None] | None = None,
    notify: Callable[[str, str | None, str | None, dict[str, Any]], None] | None = None,
    render_svg: Callable[[dict[str, Any]], str] = lambda report: "",
) -> FastAPI:
    """Assemble the API over an engine whose schema is already migrated.

    ``registry``/``metrics``/``snapshots`` are shared with the scheduler and exporter by the daemon;
    when omitted (tests) the app gets fresh ones of its own. ``render_metrics`` produces the
    ``/metrics`` body (the daemon's Exposition); by default the registry alone.
    """
    auth = Authenticator(settings.auth)
    scorer = scorer or IdentityScorer()
    limits = settings.limits
    registry = registry if registry is not None else CollectorRegistry()
    metrics = metrics if metrics is not None else ServiceMetrics(registry)
    snapshots = snapshots if snapshots is not None else SnapshotHolder()
    render = render_metrics if render_metrics is not None else (lambda: generate_latest(registry))

    def aggregation_for(model: str) -> Aggregation:
        return settings.model_config_for(model).token_aggregation

    app = FastAPI(
        title="calmon",
        version=__version__,
        description="Calibration monitoring for LLM and classifier confidence scores.",
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.snapshots = snapshots

    @app.middleware("http")
    async def _timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.request_duration.labels(request.method, path, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
        async def dependency(request: Request) -> None:
            auth.authorize(request.headers.get("authorization"), scope)

        return dependency

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers=headers)

    @app.exception_handler(BatchError)
    async def _batch_error(request: Request, exc: BatchError) -> Response:
        if exc.rejected:
            _count_rejections(exc.rejected)
        else:
            metrics.rejected.labels(exc.field).inc()
        return _error(exc.status, exc.message, exc.field, exc.rejected)

    def _count_rejections(rejected: list[Rejection]) -> None:
        for rejection in rejected:
            metrics.rejected.labels(rejection.field.split("[", 1)[0]).inc()

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        return _error(422, str(first.get("msg")), ".".join(loc) or None)

    for kind in STORE_DOWN:

        @app.exception_handler(kind)
        async def _store_down(request: Request, exc: Exception) -> Response:
            log.warning("database unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
            return _error(503, "database unavailable; retry later", headers={"Retry-After": "5"})

    @app.post(
        "/v1/predictions",
        dependencies=[Depends(require("ingest"))],
        response_model=PredictionResponse,
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
        summary="Log a batch of predictions; returns each calibrated confidence",
    )
    async def post_predictions(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        return await run_in_threadpool(_ingest_predictions, body)

    def _ingest_predictions(body: bytes) -> Response:
        items = parse_body(body, "predictions", limits)
        now = clock()
        scored, rejected = prepare_predictions(items, now, limits, aggregation_for)
        if rejected and not scored:
            raise BatchError(
                422, rejected[0].field, "every record was rejected; nothing was written", rejected
            )
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for position, item in enumerate(scored):
            groups[(item.model, item.segment)].append(position)
        calibrated: list[float] = [0.0] * len(scored)
        versions: list[str] = [""] * len(scored)
        for (model, segment), positions in groups.items():
            values, version = scorer.score(
                model,
                segment,
                [scored[p].raw_confidence for p in positions],
                [(scored[p].input_kind, scored[p].vector) for p in positions],
            )
            for position, value in zip(positions, values, strict=True):
                calibrated[position] = value
                versions[position] = version
        rows = [
            PredictionRow(
                item.model,
                item.prediction_id,
                item.segment,
                item.ts,
                item.input_kind,
                item.raw_confidence,
                item.predicted,
                item.vector,
                calibrated[i],
                versions[i],
            )
            for i, item in enumerate(scored)
        ]
        with engine.begin() as conn:
            outcome = insert_predictions(conn, rows, now)
        accepted: dict[str, int] = defaultdict(int)
        for item, result in zip(scored, outcome.results, strict=True):
            if not result.duplicate:
                accepted[item.model] += 1
        for model, count in accepted.items():
            metrics.predictions.labels(model).inc(count)
        _count_rejections(rejected)
        results = [
            {
                "index": item.position,
                "id": result.prediction_id,
                "calibrated_confidence": result.calibrated_confidence,
                "calibrator_version": result.calibrator_version,
                "duplicate": result.duplicate,
            }
            for item, result in zip(scored, outcome.results, strict=True)
        ]
        return JSONResponse(
            {
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "labelled_from_pending": outcome.labelled_from_pending,
                "rejected": [r.model_dump() for r in rejected],
                "results": results,
            }
        )

    @app.post(
        "/v1/feedback",
        dependencies=[Depends(require("ingest"))],
        response_model=FeedbackResponse,
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
        summary="Report ground truth for earlier (or not yet arrived) predictions",
    )
    async def post_feedback(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        return await run_in_threadpool(_ingest_feedback, body)

    def _ingest_feedback(body: bytes) -> Response:
        items = parse_body(body, "feedback", limits)
        prepared, rejected = prepare_feedback(items, limits)
        if rejected and not prepared:
            raise BatchError(
                422, rejected[0].field, "every record was rejected; nothing was written", rejected
            )
        with engine.begin() as conn:
            outcome = apply_feedback(conn, [item for _, item in prepared], clock())
        per_series = Counter(
            (item.model, status) for (_, item), status in zip(prepared, outcome.statuses, strict=True)
        )
        for (model, status), count in per_series.items():
            metrics.feedback.labels(model, status).inc(count)
        _count_rejections(rejected)
        return JSONResponse(
            {
                "matched": outcome.count("matched"),
                "pending": outcome.count("pending"),
                "duplicates": outcome.count("duplicate"),
                "conflicts": outcome.count("conflict"),
                "rejected": [r.model_dump() for r in rejected],
            }
        )

    @app.get("/v1/models", dependencies=[Depends(require("read"))], summary="Every model seen, with counts")
    def list_models() -> Response:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            counts = model_counts(conn)
        return JSONResponse({"models": [_model_summary(c) for c in counts.values()]})

    @app.get(
        "/v1/models/{model}",
        dependencies=[Depends(require("read"))],
        responses={404: {"model": ErrorResponse}},
        summary="One model: counts, coverage, segments, active calibrators",
    )
    def get_model(model: str) -> Response:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            counts = model_counts(conn, model).get(model)
            if counts is None:
                return _error(404, f"unknown model {model!r}", "model")
            summary = _model_summary(counts)
            summary["calibrators"] = active_calibrators(conn, model)
        snapshot = snapshots.get()
        summary["evaluated_at"] = snapshot.created_at if snapshot else None
        summary["windows"] = [_window_summary(s) for s in snapshot.for_model(model)] if snapshot else []
        return JSONResponse(summary)

    @app.get(
        "/v1/models/{model}/reliability",
        dependencies=[Depends(require("read"))],
        responses={404: {"model": ErrorResponse}},
        summary="The reliability table of one window of one model (from the latest evaluation)",
    )
    def get_reliability(
        model: str, segment: str = "*", window: str | None = None, score: str = "calibrated"
    ) -> Response:
        if score not in ("raw", "calibrated"):
            return _error(422, "score must be 'raw' or 'calibrated'", "score")
        window = window or settings.evaluation.windows[0]
        if window not in settings.evaluation.windows:
            return _error(422, f"window must be one of {settings.evaluation.windows}", "window")
        snapshot = snapshots.get()
        if snapshot is None:
            return _error(
                404, "no evaluation has run yet; retry after the first evaluation interval", "model"
            )
        stats = snapshot.find(model, segment, window, score)
        if stats is None:
            return _error(
                404, f"no data for model {model!r}, segment {segment!r} in window {window}", "model"
            )
        return JSONResponse(
            {
                **_window_summary(stats),
                "evaluated_at": snapshot.created_at,
                "bins": stats.reliability,
                "histogram": stats.histogram,
            }
        )

    @app.post(
        "/v1/calibrate",
        dependencies=[Depends(require("ingest"))],
        responses={
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
        summary="Calibrate scores without logging them (for pipelines that log elsewhere)",
    )
    async def post_calibrate(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        return await run_in_threadpool(_calibrate, body)

    def _calibrate(body: bytes) -> Response:
        items = parse_body(body, "records", limits)
        prepared, rejected = prepare_calibration(items, limits, aggregation_for)
        if rejected and not prepared:
            raise BatchError(422, rejected[0].field, "every record was rejected", rejected)
        results = []
        for index, record, raw, kind, vector in prepared:
            values, version = scorer.score(record.model, record.segment, [raw], [(kind, vector)])
            results.append(
                {
                    "index": index,
                    "raw_confidence": raw,
                    "calibrated_confidence": values[0],
                    "calibrator_version": version,
                }
            )
        return JSONResponse({"results": results, "rejected": [r.model_dump() for r in rejected]})

    @app.get("/v1/calibrators", dependencies=[Depends(require("read"))], summary="Every calibrator version")
    def get_calibrators(model: str | None = None) -> Response:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            records = calibrator_store.list_all(conn, model)
        return JSONResponse({"calibrators": [r.as_dict() for r in records]})

    @app.get(
        "/v1/calibrators/{calibrator_id}",
        dependencies=[Depends(require("read"))],
        responses={404: {"model": ErrorResponse}},
        summary="One calibrator version",
    )
    def get_calibrator(calibrator_id: int) -> Response:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            record = calibrator_store.get(conn, calibrator_id)
        if record is None:
            return _error(404, f"no calibrator {calibrator_id}", "calibrator_id")
        return JSONResponse(record.as_dict())

    @app.post(
        "/v1/calibrators/{calibrator_id}/rollback",
        dependencies=[Depends(require("admin"))],
        responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
        summary="Retire an active calibrator and re-activate the version before it",
    )
    def post_rollback(calibrator_id: int) -> Response:
        now = clock()
        try:
            with engine.begin() as conn:
                rolled, restored = calibrator_store.rollback(conn, calibrator_id, now)
        except LookupError as exc:
            return _error(404, str(exc), "calibrator_id")
        except ValueError as exc:
            return _error(409, str(exc), "calibrator_id")
        if isinstance(scorer, RegistryScorer):
            scorer.refresh(engine, now)  # this replica at once; the others within the refresh interval
        result = {"rolled_back": rolled.as_dict(), "restored": restored.as_dict() if restored else None}
        if notify is not None:
            notify("calibrator_rolled_back", rolled.model, rolled.segment, result)
        return JSONResponse(result)

    @app.post(
        "/v1/models/{model}/recalibrate",
        dependencies=[Depends(require("admin"))],
        responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
        summary="Run a recalibration now (fit, gate, promote or refuse) and return its decision",
    )
    def post_recalibrate(model: str, segment: str = "*", dry_run: bool = False) -> Response:
        if recalibrate is None:
            return _error(503, "recalibration is not available in this process", "model")
        outcome = recalibrate(model, segment, "manual", dry_run)
        status = 422 if outcome.outcome == "failed" else 200
        return JSONResponse(outcome.as_dict(), status_code=status)

    @app.get(
        "/v1/calibrators/{calibrator_id}/report",
        dependencies=[Depends(require("read"))],
        responses={404: {"model": ErrorResponse}},
        summary="The decision report of the recalibration that wrote this calibrator (JSON or Markdown)",
    )
    def get_report(calibrator_id: int, format: str = "json") -> Response:
        found = load_report(calibrator_id) if load_report is not None else None
        if found is None:
            return _error(404, f"no report for calibrator {calibrator_id}", "calibrator_id")
        if format == "markdown":
            return Response(found[1], media_type="text/markdown; charset=utf-8")
        if format == "svg":
            return Response(render_svg(found[0]), media_type="image/svg+xml")
        return JSONResponse(found[0])

    @app.get("/v1/events", dependencies=[Depends(require("read"))], summary="The event log, newest first")
    def get_events(
        model: str | None = None, kind: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> Response:
        if not 1 <= limit <= 1000:
            return _error(422, "limit must lie in [1, 1000]", "limit")
        with engine.connect().execution_options(**READ_ONLY) as conn:
            found = list_events(conn, model, kind, limit, before_id)
        return JSONResponse({"events": found})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        if settings.auth.protect_metrics:
            auth.authorize(request.headers.get("authorization"), "read")
        return Response(render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="The process is up")
    def healthz() -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/readyz", summary="The database is reachable and migrated")
    def readyz() -> Response:
        try:
            with engine.connect().execution_options(**READ_ONLY) as conn:
                conn.execute(text("SELECT 1"))
            revision = current_revision(engine)
        except STORE_DOWN as exc:
            return _error(503, f"database unreachable: {type(exc).__name__}")
        expected = head_revision()
        if revision != expected:
            return _error(503, f"schema at revision {revision}, expected {expected}; run `calmon db upgrade`")
        return JSONResponse({"status": "ready", "schema_revision": revision})

    _document_bodies(
        app,
        {"/v1/predictions": PredictionBatch, "/v1/feedback": FeedbackBatch, "/v1/calibrate": CalibrateBatch},
    )
    return app


def _window_summary(stats: WindowStats) -> dict[str, Any]:
    data = stats.as_dict()
    data.pop("reliability")
    data.pop("histogram")
    return data


def _model_summary(counts: ModelCounts) -> dict[str, Any]:
    return {
        "model": counts.model,
        "predictions": counts.predictions,
        "labelled": counts.labelled,
        "label_coverage": counts.labelled / counts.predictions if counts.predictions else 0.0,
        "pending_feedback": counts.pending_feedback,
        "feedback_conflicts": counts.conflicts,
        "segments": [
            {
                "segment": s.segment,
                "predictions": s.predictions,
                "labelled": s.labelled,
                "label_coverage": s.labelled / s.predictions if s.predictions else 0.0,
                "accuracy": s.correct / s.labelled if s.labelled else None,
                "mean_confidence_labelled": s.raw_confidence_sum_labelled / s.labelled
                if s.labelled
                else None,
                "first_ts": s.first_ts,
                "last_ts": s.last_ts,
            }
            for s in counts.segments
        ],
    }


def _document_bodies(app: FastAPI, bodies: dict[str, type[Any]]) -> None:
    """Routes reading their own body (to report per-record errors) still publish its schema."""

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
