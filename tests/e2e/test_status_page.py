"""The status page in a real headless Chromium, on a real daemon fed a day of traffic that drifts.

What a person would check: every page loads without a console error, a failed request or a request
to another host; the reliability diagram draws one point per labelled bin of the evaluation the API
serves; the screenshots are not blank; the pages work with JavaScript off; sign-in takes a token
in a form. Screenshots land in the test's temp dir (and in ``CALMON_SCREENSHOTS`` when set: that is
how ``docs/images/`` is refreshed).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.browser import Recorder, launch
from tests.support.daemon import Daemon
from tests.support.polling import eventually

CONFIG = """
evaluation: {interval_seconds: 1, windows: [1h, 24h], bootstrap_draws: 100}
recalibration: {min_rows: 1000, methods: [temperature, platt, isotonic]}
scheduler: {lease_ttl_seconds: 3}
logging: {access_log: false}
"""
HOURS = 12
PUBLISHED = {"overview.png", "model.png", "report.png"}  # the README's pictures (docs/images/)


def post(url: str, route: str, key: str, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), 5000):
        response = httpx.post(f"{url}{route}", json={key: records[start : start + 5000]}, timeout=60)
        assert response.status_code == 200, response.text


def hour_of_traffic(url: str, rng: np.random.Generator, start: float, end: float, drift: bool, tag: str,
                    labelled: float = 1.0) -> None:  # fmt: skip
    """An LLM QA model in two segments (billing turns overconfident when ``drift``) and a classifier."""
    predictions, feedback = [], []
    for model, segment, n, bias in (
        ("qa-llm", "support", 500, 0.0),
        ("qa-llm", "billing", 500, 0.22 if drift else 0.0),
        ("ticket-classifier", "default", 300, 0.0),
    ):
        p = 0.45 + 0.55 * rng.beta(4.0, 1.2, n)
        correct = rng.random(n) < np.clip(p - bias, 0, 1)
        ts = np.sort(rng.uniform(start, end, n))
        for i in range(n):
            key = f"{tag}-{segment}-{i}"
            predictions.append({"model": model, "segment": segment, "id": key, "confidence": float(p[i]),
                                "ts": float(ts[i])})  # fmt: skip
            if rng.random() < labelled:
                feedback.append({"model": model, "id": key, "correct": bool(correct[i])})
    post(url, "/v1/predictions", "predictions", predictions)
    post(url, "/v1/feedback", "feedback", feedback)


def not_blank(path: Path) -> int:
    """Distinct colours in the screenshot (a blank page has one or two)."""
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours or [])


def save(page: Any, directory: Path, name: str) -> Path:
    path = directory / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("CALMON_SCREENSHOTS")
    if target and name in PUBLISHED:
        shutil.copy(path, Path(target) / name)
    return path


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon with 12 hours of traffic; billing drifted 3 hours ago; the drift refit promoted;
    the newest 10 minutes served by the new calibrator, with labels still arriving."""
    tmp = tmp_path_factory.mktemp("status")
    config = tmp / "calmon.yaml"
    config.write_text(CONFIG)
    daemon = Daemon(f"sqlite:///{tmp / 'c.db'}", config=config, log_path=tmp / "daemon.log")
    try:
        daemon.wait_healthy()
        rng = np.random.default_rng(11)
        now = time.time()
        for k in range(HOURS):  # chronological, one evaluation after each hour: labels arrive in order
            start = now - (HOURS - k) * 3600
            end = min(start + 3600, now - 900)
            hour_of_traffic(daemon.base_url, rng, start, end, drift=k >= HOURS - 3, tag=f"h{k}")
            daemon.wait_ticks(1)

        def promoted() -> list[dict[str, Any]]:
            found = httpx.get(f"{daemon.base_url}/v1/events", params={"kind": "calibrator_promoted"})
            return list(found.json()["events"])

        (promotion,) = eventually(promoted, 90, 0.3, "the drift refit promoted")
        hour_of_traffic(daemon.base_url, rng, now - 600, time.time(), drift=True, tag="new", labelled=0.6)
        daemon.wait_ticks(2)
        yield daemon, promotion, tmp
    finally:
        daemon.stop()


def visit(browser: Any, daemon: Daemon, path: str, directory: Path, name: str,
          javascript: bool = True) -> tuple[Any, Recorder]:  # fmt: skip
    context = browser.new_context(viewport={"width": 1360, "height": 900}, java_script_enabled=javascript)
    page = context.new_page()
    recorder = Recorder(f"127.0.0.1:{daemon.port}")
    recorder.attach(page)
    response = page.goto(f"{daemon.base_url}{path}", wait_until="load")
    assert response is not None and response.status == 200, path
    save(page, directory, name)
    return page, recorder


def test_overview_model_page_and_report_in_chromium(drifted: Any) -> None:
    daemon, promotion, tmp = drifted
    with launch() as browser:
        page, recorder = visit(browser, daemon, "/", tmp, "overview.png")
        rows = page.locator("table.models tbody tr")
        assert rows.count() == 2
        assert rows.nth(0).locator("a").first.inner_text() == "qa-llm"  # what needs attention on top
        assert not recorder.problems, recorder.problems
        assert not_blank(tmp / "overview.png") > 20

        page.locator("table.models a", has_text="qa-llm").click()  # a person clicks through
        page.locator("nav.tabs a", has_text="billing").click()
        page.locator("nav.tabs a", has_text="24h").click()
        assert page.url.endswith("/models/qa-llm?segment=billing&window=24h")
        save(page, tmp, "model.png")
        query = {"segment": "billing", "window": "24h", "score": "calibrated"}
        api = httpx.get(f"{daemon.base_url}/v1/models/qa-llm/reliability", params=query).json()
        labelled_bins = [b for b in api["bins"] if b["count"]]
        markers = page.locator("svg#reliability g#reliability-calibrated-bins use")
        hollow = page.locator("svg#reliability g#reliability-calibrated-tiny use")
        assert markers.count() + hollow.count() == len(labelled_bins) > 5
        assert page.locator("svg#reliability").bounding_box()["width"] > 350
        assert page.locator('svg#history g[id="history-calibrated-ece"] path').count() >= 1
        advice = httpx.get(
            f"{daemon.base_url}/v1/models/qa-llm/advice", params={"segment": "billing", "window": "24h"}
        ).json()
        drawn = page.locator('svg#risk-coverage g[id="risk-coverage-precision"] use')  # one marker per point
        assert drawn.count() == len([p for p in advice["risk_coverage"] if p["precision"] is not None]) >= 5
        assert page.locator("svg#risk-coverage").bounding_box()["width"] > 350
        assert page.locator("table.advice tbody tr").count() == len(advice["advice"]) == 3
        assert not recorder.problems, recorder.problems
        assert not_blank(tmp / "model.png") > 20

        page.locator("table.calibrators a", has_text="decision report").first.click()
        assert page.url.endswith(f"/reports/{promotion['calibrator_id']}")
        save(page, tmp, "report.png")
        assert "promoted" in page.locator("h1").inner_text()
        assert page.locator("table.gate tbody tr").count() == 4
        assert page.locator("table.advice tbody tr").count() == 3  # before/after per advice target
        assert page.locator("table.advice ~ p").first.inner_text().startswith("Precision 90%:")
        assert page.locator("svg#report-reliability g#report-reliability-after-bins use").count() > 3
        assert not recorder.problems, recorder.problems
        assert all(url.startswith(daemon.base_url) for url in recorder.requests)


def test_pages_work_with_javascript_disabled(drifted: Any) -> None:
    daemon, promotion, tmp = drifted
    with launch() as browser:
        for path in ("/", "/models/qa-llm?segment=billing", f"/reports/{promotion['calibrator_id']}"):
            page, recorder = visit(browser, daemon, path, tmp, "nojs.png", javascript=False)
            assert page.locator("svg.chart").count() >= (0 if path == "/" else 1)
            assert page.locator("h1").count() == 1
            assert not recorder.problems, (path, recorder.problems)


def test_sign_in_with_a_token_in_the_browser(tmp_path: Path) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(
        CONFIG
        + """auth:
  tokens:
    - {name: viewer, token: viewer-token-0123456789, scopes: [read]}
    - {name: app, token: ingest-token-0123456789, scopes: [ingest]}
"""
    )
    daemon = Daemon(f"sqlite:///{tmp_path / 'c.db'}", config=config, log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        with launch() as browser:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{daemon.base_url}/models/x?window=1h")
            assert "/login?next=/models/x" in page.url  # sent to sign in, and back afterwards
            page.fill("#token", "ingest-token-0123456789")
            page.click("form.login button")
            assert page.locator("p.message").inner_text() == "token 'app' lacks the 'read' scope"
            page.fill("#token", "viewer-token-0123456789")
            page.click("form.login button")
            assert page.url.endswith("/models/x?window=1h")  # back where the viewer was going
            message = page.locator("p.message").inner_text()  # signed in: the page itself answers
            assert message.startswith(("no evaluation has run yet", "no data for model 'x'")), message
            (cookie,) = context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert "viewer-token" not in cookie["value"]  # the digest, never the token
            page.goto(f"{daemon.base_url}/v1/models")  # the cookie opens pages only, not the API
            assert "missing or invalid bearer token" in page.content()
            page.goto(f"{daemon.base_url}/")
            page.click("form.signout button")
            assert "/login" in page.url and context.cookies() == []
        assert "viewer-token-0123456789" not in daemon.log(tail=None)
    finally:
        daemon.stop()


def test_interactive_api_docs_render_offline(drifted: Any) -> None:
    daemon, _, tmp = drifted
    with launch() as browser:
        page, recorder = visit(browser, daemon, "/docs", tmp, "docs.png")
        page.wait_for_selector(".opblock", timeout=20_000)  # Swagger UI drew the routes
        assert page.locator(".opblock").count() >= 10
        assert not recorder.problems, recorder.problems
        page, recorder = visit(browser, daemon, "/redoc", tmp, "redoc.png")
        page.get_by_text("/v1/predictions").first.wait_for(timeout=20_000)  # ReDoc drew the routes
        assert not recorder.problems, recorder.problems
        local = (daemon.base_url, "data:", f"blob:{daemon.base_url}")
        assert all(url.startswith(local) for url in recorder.requests), recorder.requests
