"""The calibrator registry over HTTP: versions, reports, rollback, and manual recalibration."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
from monitor.collector.responses import (
    CalibratorOut,
    CalibratorsResponse,
    RecalibrationResponse,
    RollbackResponse,
    errors,
)
from monitor.recalibration.job import UnknownSeries
from monitor.recalibration.report import svg as reliability_svg
from monitor.vocabulary import MODEL_WIDE, RecalibrationOutcome, Trigger

__all__ = ["router"]

router = APIRouter()
READ = [Depends(require("read"))]
ADMIN = [Depends(require("admin")), Depends(refuse_simple_requests)]


@router.get(
    "/v1/calibrators",
    dependencies=READ,
    response_model=CalibratorsResponse,
    responses=errors(422),
    summary="Every calibrator version",
)
def get_calibrators(services: ServicesDep, model: OptionalNameQuery = None) -> Response:
    return JSONResponse({"calibrators": services.calibrators(model)})


@router.get(
    "/v1/calibrators/{calibrator_id}",
    dependencies=READ,
    response_model=CalibratorOut,
    responses=errors(404, 422),
    summary="One calibrator version",
)
def get_calibrator(calibrator_id: CalibratorId, services: ServicesDep) -> Response:
    return JSONResponse(services.calibrator(calibrator_id))


@router.post(
    "/v1/calibrators/{calibrator_id}/rollback",
    dependencies=ADMIN,
    response_model=RollbackResponse,
    responses=errors(404, 409, 415, 422),
    summary="Retire an active calibrator and re-activate the version before it",
)
def post_rollback(calibrator_id: CalibratorId, services: ServicesDep) -> Response:
    return JSONResponse(services.rollback(calibrator_id))


@router.post(
    "/v1/models/{model}/recalibrate",
    dependencies=ADMIN,
    response_model=RecalibrationResponse,
    responses=errors(404, 415, 422),
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
    if outcome.outcome == RecalibrationOutcome.FAILED:  # an error body that also carries the outcome
        return JSONResponse({"error": outcome.reason, "field": "model", **outcome.as_dict()}, status_code=422)
    return JSONResponse(outcome.as_dict())


@router.get(
    "/v1/calibrators/{calibrator_id}/report",
    dependencies=READ,
    response_model=dict[str, Any],
    responses={
        200: {
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "image/svg+xml": {"schema": {"type": "string"}},
            }
        },
        **errors(404, 422),
    },
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
