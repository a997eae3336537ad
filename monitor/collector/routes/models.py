"""Reads about models: counts, coverage, windows, reliability tables, and the event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from monitor.collector.deps import ROW_ID_MAX, ModelName, NameQuery, OptionalNameQuery, ServicesDep, require
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
def get_model(model: ModelName, services: ServicesDep) -> Response:
    return JSONResponse(services.model_detail(model))


@router.get(
    "/v1/models/{model}/reliability",
    responses={404: {"model": ErrorResponse}},
    summary="The reliability table of one window of one model (from the latest evaluation)",
)
def get_reliability(
    model: ModelName,
    services: ServicesDep,
    segment: Annotated[str, NameQuery] = MODEL_WIDE,
    window: Annotated[str | None, Query(max_length=16)] = None,
    score: Annotated[str, Query(max_length=16)] = Score.CALIBRATED.value,
) -> Response:
    return JSONResponse(services.reliability(model, segment, window, score))


@router.get("/v1/events", summary="The event log, newest first")
def get_events(
    services: ServicesDep,
    model: OptionalNameQuery = None,
    kind: OptionalNameQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=ROW_ID_MAX)] = None,
) -> Response:
    return JSONResponse({"events": services.events(model, kind, limit, before_id)})
