"""Bearer tokens with scopes: 401 for no/unknown token, 403 for a missing scope, open when unconfigured."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from monitor.config import Settings
from tests.helpers import post_feedback, post_predictions, pred

INGEST = "ingest-token-0123456789"
READER = "reader-token-0123456789"
ADMIN = "admin-token-01234567890"


@pytest.fixture
def secured(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> TestClient:
    monkeypatch.setenv("CALMON_TEST_INGEST_TOKEN", INGEST)
    settings = make_settings(
        auth={
            "tokens": [
                {"name": "app", "token_env": "CALMON_TEST_INGEST_TOKEN", "scopes": ["ingest"]},
                {"name": "grafana", "token": READER, "scopes": ["read"]},
                {"name": "ops", "token": ADMIN, "scopes": ["admin"]},
            ]
        }
    )
    return make_client(settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_open_when_no_tokens(client: TestClient) -> None:
    assert post_predictions(client, [pred("a")]).status_code == 200
    assert client.get("/v1/models").status_code == 200


def test_missing_and_wrong_tokens_are_401(secured: TestClient) -> None:
    for headers in (
        {},
        bearer("not-a-real-token-at-all"),
        {"Authorization": f"Basic {INGEST}"},
        {"Authorization": "Bearer "},
    ):
        response = post_predictions(secured, [pred("a")], headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert secured.get("/v1/models").status_code == 401


def test_scopes(secured: TestClient) -> None:
    assert post_predictions(secured, [pred("a")], headers=bearer(INGEST)).status_code == 200
    assert (
        post_feedback(
            secured, [{"model": "qa-bot", "id": "a", "correct": True}], headers=bearer(INGEST)
        ).status_code
        == 200
    )
    forbidden = secured.get("/v1/models", headers=bearer(INGEST))
    assert forbidden.status_code == 403 and "read" in forbidden.json()["error"]
    assert post_predictions(secured, [pred("b")], headers=bearer(READER)).status_code == 403
    assert secured.get("/v1/models/qa-bot", headers=bearer(READER)).status_code == 200
    # admin implies read and ingest
    assert secured.get("/v1/models", headers=bearer(ADMIN)).status_code == 200
    assert post_predictions(secured, [pred("c")], headers=bearer(ADMIN)).status_code == 200


def test_health_stays_open(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


def test_tokens_never_logged(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        post_predictions(secured, [pred("a")], headers=bearer(INGEST))
        secured.get("/v1/models", headers=bearer("wrong-token-wrong-token"))
    assert INGEST not in caplog.text and "wrong-token-wrong-token" not in caplog.text
