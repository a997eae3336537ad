"""Signing in to the status page: the token goes in a form body, the cookie holds its digest and
opens pages only, nothing leads off this server, and a hostile form gets a 4xx."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.config import Settings
from tests.support.harness import Clock, build_daemon

READER = "reader-token-0123456789"
INGEST = "ingest-token-0123456789"


@pytest.fixture
def client(engine: Engine, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = make_settings(auth={"tokens": [
        {"name": "viewer", "token": READER, "scopes": ["read"]},
        {"name": "app", "token": INGEST, "scopes": ["ingest"]},
    ]})  # fmt: skip
    with TestClient(build_daemon(engine, settings, Clock()).app, base_url="http://127.0.0.1") as client:
        yield client


def sign_in(client: TestClient, token: str, target: str = "/") -> object:
    return client.post("/login", data={"token": token, "next": target}, follow_redirects=False)


def test_pages_send_a_stranger_to_sign_in_and_back(client: TestClient) -> None:
    response = client.get("/models/m?window=1h", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/models/m%3Fwindow%3D1h"
    form = client.get(response.headers["location"]).text
    assert 'name="next" value="/models/m?window=1h"' in form and 'type="password"' in form


def test_a_read_token_signs_in_with_a_digest_cookie_that_opens_pages_only(client: TestClient) -> None:
    response = sign_in(client, READER, "/models/m")
    assert response.status_code == 303 and response.headers["location"] == "/models/m"
    cookie = response.headers["set-cookie"]
    assert f"calmon_session={hashlib.sha256(READER.encode()).hexdigest()}" in cookie
    assert READER not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie  # plain HTTP here
    assert client.get("/").status_code == 200
    assert client.get("/v1/models").status_code == 401  # the API still demands the bearer token
    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and 'calmon_session=""' in out.headers["set-cookie"]


def test_a_bearer_header_serves_pages_too(client: TestClient) -> None:
    assert client.get("/", headers={"authorization": f"Bearer {READER}"}).status_code == 200
    assert client.get("/", headers={"authorization": f"Bearer {INGEST}"}).status_code == 403


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("wrong", 401, "unknown token"),
        (INGEST, 403, "lacks the &#39;read&#39; scope"),
        ("", 401, "unknown token"),
    ],
)
def test_a_bad_token_stays_on_the_form_with_the_reason(
    client: TestClient, token: str, status: int, message: str
) -> None:
    response = sign_in(client, token)
    assert response.status_code == status and message in response.text
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil", "models"])
def test_sign_in_never_redirects_off_this_server(client: TestClient, target: str) -> None:
    assert sign_in(client, READER, target).headers["location"] == "/"


def test_hostile_sign_in_forms_get_a_4xx(client: TestClient) -> None:
    cross = client.post("/login", data={"token": READER}, headers={"sec-fetch-site": "cross-site"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    huge = client.post("/login", data={"token": "x" * 10_000})
    assert huge.status_code == 400
    json = client.post("/login", json={"token": READER})
    assert json.status_code == 400
    many = client.post("/login", content="&".join(f"f{i}=1" for i in range(50)),
                       headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert many.status_code == 400
    client.cookies.set("calmon_session", "zz" * 32)
    forged = client.get("/", follow_redirects=False)
    assert forged.status_code == 303


def test_behind_a_path_prefix_every_link_and_redirect_keeps_it(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(auth={"tokens": [{"name": "viewer", "token": READER, "scopes": ["read"]}]})
    app = build_daemon(engine, settings, Clock()).app
    with TestClient(app, base_url="http://127.0.0.1", root_path="/calmon") as client:
        away = client.get("/models/m?window=1h", follow_redirects=False)
        assert away.headers["location"] == "/calmon/login?next=/models/m%3Fwindow%3D1h"
        form = client.get("/login").text
        assert 'action="/calmon/login"' in form and 'href="/calmon/static/calmon.css"' in form
        signed = client.post("/login", data={"token": READER, "next": "/models/m"}, follow_redirects=False)
        assert signed.headers["location"] == "/calmon/models/m"
        page = client.get("/").text
        links = re.findall(r'(?:href|src|action)="([^"]*)"', page)
        assert links and all(link.startswith("/calmon/") for link in links), links
