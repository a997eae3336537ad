"""Reads about models: counts, coverage, windows, reliability tables, and the event log."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from monitor.collector.deps import ServicesDep, require
from monitor.collector.errors import JSONResponse
from monitor.collector.schemas import ErrorResponse
from monitor.vocabulary import MODEL_WIDE, Score

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require("read"))])


@router.get("/v1/models", summary="Every model seen, with counts")
def list_models(services: ServicesDep) -> Response:
    return JSONResponse({"models": services.list_models()})


@router.get(
    "/v1/models/{model}",
    responses={404: {"model": ErrorResponse}},
    summary="One model: counts, coverage, segments, active calibrators",
)
def get_model(model: str, services: ServicesDep) -> Response:
    return JSONResponse(services.model_detail(model))


@router.get(
    "/v1/models/{model}/reliability",
    responses={404: {"model": ErrorResponse}},
    summary="The reliability table of one window of one model (from the latest evaluation)",
)
def get_reliability(
    model: str,
    services: ServicesDep,
    segment: str = MODEL_WIDE,
    window: str | None = None,
    score: str = Score.CALIBRATED.value,
) -> Response:
    return JSONResponse(services.reliability(model, segment, window, score))


@router.get("/v1/events", summary="The event log, newest first")
def get_events(
    services: ServicesDep,
    model: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> Response:
    return JSONResponse({"events": services.events(model, kind, limit, before_id)})
