"""What routes depend on, typed: ``Annotated[..., Depends(...)]`` aliases over one ``Context``.

``create_app`` builds a ``Context`` from explicit parts and stores it on ``app.state``; routes name
the part they need (``engine: EngineDep``, ``limits: LimitsDep``, ``services: ServicesDep``) instead
of closing over ``create_app``'s locals. The scorer, the clock and the snapshot reach routes through
the services object that uses them, so no route reaches past it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy import Engine

from monitor.collector.auth import Authenticator
from monitor.collector.schemas import NAME_PATTERN
from monitor.collector.services import Services
from monitor.collector.serving import Scorer
from monitor.config import LimitsConfig, Scope, Settings
from monitor.evaluation.snapshot import SnapshotHolder
from monitor.recalibration.service import RecalibrationTrigger
from monitor.telemetry import ServiceMetrics

__all__ = [
    "ROW_ID_MAX",
    "AuthDep",
    "CalibratorId",
    "Context",
    "ContextDep",
    "EngineDep",
    "LimitsDep",
    "ModelName",
    "NameQuery",
    "OptionalNameQuery",
    "ServicesDep",
    "SettingsDep",
    "require",
]


@dataclass(frozen=True)
class Context:
    settings: Settings
    engine: Engine
    scorer: Scorer
    clock: Callable[[], float]
    metrics: ServiceMetrics
    snapshots: SnapshotHolder
    auth: Authenticator
    services: Services
    render_metrics: Callable[[], bytes]
    recalibrator: RecalibrationTrigger | None


# The dependencies below are ``async def`` although they only read attributes: FastAPI runs a plain
# ``def`` dependency in its thread pool, a thread hop each (three per ingest request, with the GIL
# changing hands every time).


def _context_of(request: Request) -> Context:
    found: Context = request.app.state.context
    return found


async def context(request: Request) -> Context:
    return _context_of(request)


ContextDep = Annotated[Context, Depends(context)]


async def _settings(ctx: ContextDep) -> Settings:
    return ctx.settings


async def _engine(ctx: ContextDep) -> Engine:
    return ctx.engine


async def _services(ctx: ContextDep) -> Services:
    return ctx.services


async def _limits(ctx: ContextDep) -> LimitsConfig:
    return ctx.settings.limits


async def _auth(ctx: ContextDep) -> Authenticator:
    return ctx.auth


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]
ServicesDep = Annotated[Services, Depends(_services)]
LimitsDep = Annotated[LimitsConfig, Depends(_limits)]
AuthDep = Annotated[Authenticator, Depends(_auth)]


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: the request's bearer token must grant ``scope`` (when tokens exist)."""

    async def dependency(request: Request) -> None:
        _context_of(request).auth.authorize(request.headers.get("authorization"), scope)

    return dependency


# Path and query parameters reach SQL: bound them like the body's fields (a NUL or a 2**63 id would
# otherwise be a driver error, i.e. a 500).
ROW_ID_MAX = 2**63 - 1  # BIGINT
ModelName = Annotated[str, Path(min_length=1, max_length=256, pattern=NAME_PATTERN)]
CalibratorId = Annotated[int, Path(ge=1, le=ROW_ID_MAX)]
NameQuery = Query(min_length=1, max_length=256, pattern=NAME_PATTERN)
OptionalNameQuery = Annotated[str | None, Query(min_length=1, max_length=256, pattern=NAME_PATTERN)]
