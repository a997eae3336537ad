"""The request deadline and the duration metric, around a small app whose endpoints take their time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from starlette.responses import PlainTextResponse, StreamingResponse

from monitor.collector.middleware import Deadline, RequestTiming
from monitor.telemetry import ServiceMetrics

DEADLINE = 0.3


def _app(metrics: ServiceMetrics) -> FastAPI:
    app = FastAPI()

    @app.get("/slow")
    def slow() -> PlainTextResponse:  # a worker thread stuck on a stalled database
        time.sleep(DEADLINE * 6)
        return PlainTextResponse("late")

    @app.get("/quick/{n}")
    async def quick(n: int) -> PlainTextResponse:
        return PlainTextResponse(f"ok {n}")

    @app.get("/streaming")
    async def streaming() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"first "
            await asyncio.sleep(DEADLINE * 2)  # past the deadline, but the answer has started
            yield b"second"

        return StreamingResponse(parts())

    @app.get("/x/recalibrate")
    def exempt() -> PlainTextResponse:
        time.sleep(DEADLINE * 2)
        return PlainTextResponse("fitted")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    app.add_middleware(Deadline, seconds=DEADLINE, exempt=lambda path: path.endswith("/recalibrate"))
    app.add_middleware(RequestTiming, metrics=metrics)
    return app


@pytest.fixture
def served() -> tuple[TestClient, CollectorRegistry]:
    registry = CollectorRegistry()
    return TestClient(_app(ServiceMetrics(registry)), raise_server_exceptions=False), registry


def _count(registry: CollectorRegistry, path: str, status: str) -> float:
    labels = {"method": "GET", "route": path, "status": status}
    return registry.get_sample_value("calmon_http_request_duration_seconds_count", labels) or 0.0


def test_an_answer_not_started_by_the_deadline_is_a_503_in_time(
    served: tuple[TestClient, CollectorRegistry],
) -> None:
    client, registry = served
    began = time.perf_counter()
    response = client.get("/slow")
    took = time.perf_counter() - began
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert f"no answer within {DEADLINE:g} s" in response.json()["error"]
    assert took < DEADLINE * 4, took  # not the endpoint's 1.8 s
    assert _count(registry, "/slow", "503") == 1


def test_a_started_answer_is_never_cut_and_exempt_routes_run_long(
    served: tuple[TestClient, CollectorRegistry],
) -> None:
    client, registry = served
    assert client.get("/streaming").text == "first second"
    assert client.get("/x/recalibrate").text == "fitted"
    assert [client.get(f"/quick/{n}").text for n in range(3)] == ["ok 0", "ok 1", "ok 2"]
    assert _count(registry, "/streaming", "200") == 1
    assert _count(registry, "/quick/{n}", "200") == 3  # the route's template: bounded label values


def test_an_endpoint_failure_is_timed_as_a_500_and_unknown_paths_as_one_value(
    served: tuple[TestClient, CollectorRegistry],
) -> None:
    client, registry = served
    assert client.get("/boom").status_code == 500
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/another/unknown").status_code == 404
    assert _count(registry, "/boom", "500") == 1
    assert _count(registry, "unmatched", "404") == 2


def test_every_dependency_of_the_api_runs_on_the_event_loop() -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop per request for what
    only reads the daemon's context (three of them per ingest request cost measurable CPU). Route
    handlers may be plain ``def`` (their database work belongs in a thread); their dependencies not."""
    import inspect

    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from monitor.collector.routes import ROUTERS
    from monitor.web.pages import router as pages

    def calls(dependant: Dependant) -> list[object]:
        found = []
        for sub in dependant.dependencies:
            found.append(sub.call)
            found.extend(calls(sub))
        return found

    ours = []
    for router in [*ROUTERS, pages]:
        for route in router.routes:
            if isinstance(route, APIRoute):
                ours.extend(
                    c for c in calls(route.dependant) if getattr(c, "__module__", "").startswith("monitor.")
                )
    assert len(ours) > 20  # the walk found the routes' dependencies
    sync = sorted({f"{c.__module__}.{c.__qualname__}" for c in ours if not inspect.iscoroutinefunction(c)})  # type: ignore[attr-defined]
    assert sync == []
