"""Reads about models: counts, coverage, windows, reliability tables, and the event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from monitor.collector.deps import ROW_ID_MAX, ModelName, NameQuery, OptionalNameQuery, ServicesDep, require
from monitor.collector.errors import JSONResponse
from monitor.collector.responses import (
    AdviceResponse,
    EventsResponse,
    ModelDetail,
    ModelsResponse,
    ReliabilityResponse,
    errors,
)
from monitor.vocabulary import MODEL_WIDE, Score

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require("read"))])


@router.get(
    "/v1/models", response_model=ModelsResponse, responses=errors(), summary="Every model seen, with counts"
)
def list_models(services: ServicesDep) -> Response:
    return JSONResponse({"models": services.list_models()})


@router.get(
    "/v1/models/{model}",
    response_model=ModelDetail,
    responses=errors(404, 422),
    summary="One model: counts, coverage, segments, active calibrators",
)
def get_model(model: ModelName, services: ServicesDep) -> Response:
    return JSONResponse(services.model_detail(model))


@router.get(
    "/v1/models/{model}/reliability",
    response_model=ReliabilityResponse,
    responses=errors(404, 422),
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


@router.get(
    "/v1/models/{model}/advice",
    response_model=AdviceResponse,
    responses=errors(404, 422),
    summary="Advised calibrated-confidence thresholds per target precision (selective prediction)",
)
def get_advice(
    model: ModelName,
    services: ServicesDep,
    segment: Annotated[str, NameQuery] = MODEL_WIDE,
    window: Annotated[str | None, Query(max_length=16)] = None,
    target: Annotated[float | None, Query(gt=0, lt=1)] = None,
) -> Response:
    return JSONResponse(services.advice(model, segment, window, target))


@router.get(
    "/v1/events", response_model=EventsResponse, responses=errors(422), summary="The event log, newest first"
)
def get_events(
    services: ServicesDep,
    model: OptionalNameQuery = None,
    kind: OptionalNameQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=ROW_ID_MAX)] = None,
) -> Response:
    return JSONResponse({"events": services.events(model, kind, limit, before_id)})
