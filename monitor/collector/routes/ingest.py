"""Writes from applications: predictions, feedback, and scoring without logging."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from monitor.collector.deps import LimitsDep, ServicesDep, require
from monitor.collector.errors import JSONResponse, read_body
from monitor.collector.responses import CalibrateResponse, errors
from monitor.collector.schemas import FeedbackResponse, PredictionResponse

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require("ingest"))])
WRITE_ERRORS = errors(400, 413, 415, 422)


@router.post(
    "/v1/predictions",
    response_model=PredictionResponse,
    responses=WRITE_ERRORS,
    summary="Log a batch of predictions; returns each calibrated confidence",
)
async def post_predictions(
    request: Request,
    limits: LimitsDep,
    services: ServicesDep,
    target: Annotated[float | None, Query(gt=0, lt=1, description="Also say accept/review for it")] = None,
) -> Response:
    body = await read_body(request, limits.max_body_bytes)
    return JSONResponse(await run_in_threadpool(services.ingest_predictions, body, target))


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses=WRITE_ERRORS,
    summary="Report ground truth for earlier (or not yet arrived) predictions",
)
async def post_feedback(request: Request, limits: LimitsDep, services: ServicesDep) -> Response:
    body = await read_body(request, limits.max_body_bytes)
    return JSONResponse(await run_in_threadpool(services.ingest_feedback, body))


@router.post(
    "/v1/calibrate",
    response_model=CalibrateResponse,
    responses=WRITE_ERRORS,
    summary="Calibrate scores without logging them (for pipelines that log elsewhere)",
)
async def post_calibrate(
    request: Request,
    limits: LimitsDep,
    services: ServicesDep,
    target: Annotated[float | None, Query(gt=0, lt=1, description="Also say accept/review for it")] = None,
) -> Response:
    body = await read_body(request, limits.max_body_bytes)
    return JSONResponse(await run_in_threadpool(services.calibrate, body, target))
