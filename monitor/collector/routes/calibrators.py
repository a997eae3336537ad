"""The calibrator registry over HTTP: versions, reports, rollback, and manual recalibration."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from starlette.responses import Response

from monitor.collector.deps import (
    CalibratorId,
    ContextDep,
    ModelName,
    NameQuery,
    OptionalNameQuery,
    ServicesDep,
    require,
)
from monitor.collector.errors import JSONResponse, error, refuse_simple_requests
from monitor.collector.schemas import ErrorResponse
from monitor.recalibration.job import UnknownSeries
from monitor.recalibration.report import svg as reliability_svg
from monitor.vocabulary import MODEL_WIDE, RecalibrationOutcome, Trigger

__all__ = ["router"]

router = APIRouter()
READ = [Depends(require("read"))]
ADMIN = [Depends(require("admin")), Depends(refuse_simple_requests)]


@router.get("/v1/calibrators", dependencies=READ, summary="Every calibrator version")
def get_calibrators(services: ServicesDep, model: OptionalNameQuery = None) -> Response:
    return JSONResponse({"calibrators": services.calibrators(model)})


@router.get(
    "/v1/calibrators/{calibrator_id}",
    dependencies=READ,
    responses={404: {"model": ErrorResponse}},
    summary="One calibrator version",
)
def get_calibrator(calibrator_id: CalibratorId, services: ServicesDep) -> Response:
    return JSONResponse(services.calibrator(calibrator_id))


@router.post(
    "/v1/calibrators/{calibrator_id}/rollback",
    dependencies=ADMIN,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Retire an active calibrator and re-activate the version before it",
)
def post_rollback(calibrator_id: CalibratorId, services: ServicesDep) -> Response:
    return JSONResponse(services.rollback(calibrator_id))


@router.post(
    "/v1/models/{model}/recalibrate",
    dependencies=ADMIN,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="Run a recalibration now (fit, gate, promote or refuse) and return its decision",
)
def post_recalibrate(
    model: ModelName, ctx: ContextDep, segment: Annotated[str, NameQuery] = MODEL_WIDE, dry_run: bool = False
) -> Response:
    if ctx.recalibrator is None:
        return error(503, "recalibration is not available in this process", "model")
    try:
        outcome = ctx.recalibrator.run(model, segment, Trigger.MANUAL, dry_run)
    except UnknownSeries as exc:
        return error(404, str(exc), "model" if segment == MODEL_WIDE else "segment")
    status = 422 if outcome.outcome == RecalibrationOutcome.FAILED else 200
    return JSONResponse(outcome.as_dict(), status_code=status)


@router.get(
    "/v1/calibrators/{calibrator_id}/report",
    dependencies=READ,
    responses={404: {"model": ErrorResponse}},
    summary="The decision report of the recalibration that wrote this calibrator (JSON or Markdown)",
)
def get_report(
    calibrator_id: CalibratorId,
    services: ServicesDep,
    format: Literal["json", "markdown", "svg"] = "json",
) -> Response:
    body, markdown = services.report(calibrator_id)
    if format == "markdown":
        return Response(markdown, media_type="text/markdown; charset=utf-8")
    if format == "svg":
        return Response(reliability_svg(body), media_type="image/svg+xml")
    return JSONResponse(body)
