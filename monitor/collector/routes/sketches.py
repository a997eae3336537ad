"""Sketch batches computed outside calmon (``monitor.spark``): accepted whole, folded by the leader."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from monitor.collector.deps import ContextDep, require
from monitor.collector.errors import JSONResponse, error, read_body
from monitor.collector.responses import SketchBatchAccepted, SketchBatchStatus, errors
from monitor.collector.sketches import BATCH_ID_PATTERN, accept_sketches
from monitor.store import sketch_batches
from monitor.store.engine import READ_ONLY

__all__ = ["router"]

router = APIRouter()
DUPLICATE: dict[int | str, dict[str, Any]] = {
    200: {"model": SketchBatchAccepted, "description": "The same batch was accepted before: nothing written"}
}
BatchId = Annotated[str, Path(min_length=1, max_length=128, pattern=BATCH_ID_PATTERN)]


@router.post(
    "/v1/sketches",
    dependencies=[Depends(require("admin"))],
    response_model=SketchBatchAccepted,
    status_code=201,
    responses={**DUPLICATE, **errors(400, 409, 413, 415, 422)},
    summary="Load a sketch batch computed outside calmon (the Spark job); folded at the next tick",
)
async def post_sketches(request: Request, ctx: ContextDep) -> Response:
    body = await read_body(request, ctx.settings.limits.max_body_bytes)

    status, summary = await run_in_threadpool(accept_sketches, body, ctx.engine, ctx.settings, ctx.clock())
    return JSONResponse(summary, status_code=status)


@router.get(
    "/v1/sketches/{batch_id}",
    dependencies=[Depends(require("read"))],
    response_model=SketchBatchStatus,
    responses=errors(404),
    summary="Whether a sketch batch was accepted, and when the leader folded it",
)
def get_sketch_batch(batch_id: BatchId, ctx: ContextDep) -> Response:
    with ctx.engine.connect().execution_options(**READ_ONLY) as conn:
        found = sketch_batches.batch_status(conn, batch_id)
        conn.rollback()
    if found is None:
        return error(404, f"no sketch batch {batch_id!r}", "batch_id")
    return JSONResponse(found)
