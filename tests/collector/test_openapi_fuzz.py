"""Property-based fuzz of the API from its own ``/openapi.json`` (schemathesis), on SQLite and a real
PostgreSQL: no server error, every answer's status documented and its body matching its schema.

Bounded for CI: a fixed number of generated cases per operation, no deadline per case.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from monitor.collector.api import create_app
from monitor.config import Settings
from monitor.recalibration.service import Recalibrator
from monitor.telemetry import ServiceMetrics
from tests.conftest import MakeSettings
from tests.helpers import post_feedback, post_predictions, pred

CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)
CASES_PER_OPERATION = 40


@pytest.fixture
def fuzzed_app(engine: Engine, make_settings: MakeSettings) -> Iterator[tuple[Settings, object]]:
    settings_ = make_settings(recalibration={"min_rows": 20, "bootstrap_draws": 50})
    metrics = ServiceMetrics(CollectorRegistry())
    app = create_app(
        settings_, engine, metrics=metrics, recalibrator=Recalibrator(engine, settings_, metrics)
    )
    with TestClient(app) as client:  # some data, so reads find something
        post_predictions(client, [pred(f"p{i}", 0.5 + i / 50, segment="s1") for i in range(20)])
        post_feedback(client, [{"model": "qa-bot", "id": f"p{i}", "correct": i % 2 == 0} for i in range(10)])
    yield settings_, app


def operations(app: object) -> list[object]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_every_documented_operation_survives_generated_input(fuzzed_app: tuple[Settings, object]) -> None:
    _, app = fuzzed_app
    found = operations(app)
    client = TestClient(app)  # type: ignore[arg-type]
    assert len(found) >= 14  # every route of the API is fuzzed
    failures: list[str] = []
    for operation, mode in itertools.product(found, GenerationMode):  # valid input, then invalid input

        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        @given(case=operation.as_strategy(mode))  # type: ignore[attr-defined]
        def run(case: Any) -> None:
            # Through Starlette's own test client (httpx): schemathesis' requests transport clashes
            # with the urllib3-future that grafana-client's niquests installs.
            kwargs = case.as_transport_kwargs(base_url="http://testserver")
            response = client.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers=kwargs.get("headers"),
                json=kwargs.get("json"),
                content=kwargs.get("data") if "json" not in kwargs else None,
            )
            case.validate_response(response, checks=list(CHECKS))

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation  # no parameter to get wrong (GET /healthz)
        except Exception as exc:  # collect: one report listing every operation that fails
            failures.append(f"{operation} ({mode.value}): {str(exc)[:2000]}")
    assert failures == [], "\n\n".join(failures)
