"""The status page in-process, on SQLite and PostgreSQL: what each page shows is what the snapshot and
the store hold, diagrams draw exactly the bins that have labels, history equals a recomputation from
the raw rows, and no page refers to another host."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.app import Daemon
from monitor.calibration.metrics import expected_calibration_error
from monitor.config import Settings
from monitor.evaluation.windows import WindowStats
from monitor.web import views
from tests.support.harness import Clock, build_daemon

START = 1_800_000_000.0


def send(daemon: Daemon, model: str, segment: str, p: np.ndarray, correct: np.ndarray | None,
         ts: np.ndarray, tag: str) -> None:  # fmt: skip
    services = daemon.app.state.context.services
    records = [{"model": model, "segment": segment, "id": f"{tag}{i}", "confidence": float(p[i]),
                "ts": float(ts[i])} for i in range(p.size)]  # fmt: skip
    services.ingest_predictions(orjson.dumps({"predictions": records}))
    if correct is not None:
        feedback = [{"model": model, "id": f"{tag}{i}", "correct": bool(correct[i])} for i in range(p.size)]
        services.ingest_feedback(orjson.dumps({"feedback": feedback}))


def tick(daemon: Daemon, clock: Clock, seconds: float = 60.0) -> Any:
    clock.now += seconds
    daemon.scheduler.renew_lease()
    return daemon.scheduler.evaluate_once()


@dataclass
class Fed:
    daemon: Daemon
    client: TestClient
    clock: Clock
    rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # segment of "qa" -> (p, correct, ts)
    alarmed: str  # the overview after the drift alarm, before the refit


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        evaluation={
            "windows": ["1h", "6h"],
            "interval_seconds": 60,
            "bucket_seconds": 60,
            "bootstrap_draws": 50,
        },
        recalibration={"min_rows": 1000, "methods": ["platt", "isotonic"]},
    )


@pytest.fixture
def fed(engine: Engine, settings: Settings) -> Iterator[Fed]:
    """Two models: "qa" with a calibrated segment "a" and a segment "b" turned overconfident; "clf"
    healthy; a promoted calibrator; tiny bins included (a few rows at low confidence)."""
    clock = Clock(START)
    daemon = build_daemon(engine, settings, clock)
    rng = np.random.default_rng(3)
    rows = {}
    for segment, bias, n in (("a", 0.0, 1500), ("b", 0.2, 3000)):
        p = 0.5 + 0.5 * rng.beta(3.0, 1.0, n)
        p[:3] = [0.05, 0.12, 0.31]  # three tiny bins: one label each
        correct = rng.random(n) < np.clip(p - bias, 0, 1)
        ts = START - 3000 + 2900 * np.arange(n) / n
        send(daemon, "qa", segment, p, correct, ts, f"{segment}-")
        rows[segment] = (p, correct, ts)
    p = 0.5 + 0.5 * rng.beta(3.0, 1.0, 800)
    send(daemon, "clf", "default", p, rng.random(800) < p, START - 1000 + np.arange(800.0), "c-")
    tick(daemon, clock)
    with TestClient(daemon.app) as client:
        alarmed = client.get("/").text
        daemon.queue.drain()  # the drift-triggered refit of qa
        tick(daemon, clock)
        yield Fed(daemon, client, clock, rows, alarmed)


class Links(HTMLParser):
    """Every URL an HTML page refers to (href, src, action, and CSS url())."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("href", "src", "action", "xlink:href", "poster", "srcset", "formaction"):
            if found.get(name):
                self.urls.append(str(found[name]))
        for value in re.findall(r"url\(([^)]*)\)", found.get("style") or ""):
            self.urls.append(value)


def parse(html: str) -> Links:
    links = Links()
    links.feed(html)
    return links


def snapshot_stats(fed: Fed, model: str, segment: str, window: str, score: str) -> WindowStats:
    snapshot = fed.daemon.holder.get()
    assert snapshot is not None
    found = snapshot.find(model, segment, window, score)
    assert found is not None
    return found


def test_overview_lists_every_model_with_attention_first(fed: Fed) -> None:
    response = fed.client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # none allowed at all
    assert "default-src 'none'" in response.headers["content-security-policy"]
    alarmed = fed.alarmed
    assert alarmed.index('href="/models/qa"') < alarmed.index('href="/models/clf"')  # the alarm on top
    row = alarmed[alarmed.index('href="/models/qa"') : alarmed.index('href="/models/clf"')]
    assert 'class="badge alarm"' in row and "served confidence miscalibrated (segment b)" in row
    assert "none (identity)" in row
    html = response.text  # after the refit: the calibrator compensates, the raw drift is watched
    assert html.index('href="/models/qa"') < html.index('href="/models/clf"')
    row = html[html.index('href="/models/qa"') : html.index('href="/models/clf"')]
    assert 'class="badge watch"' in row and "raw scores miscalibrated; the calibrator compensates" in row
    # the drifting segment's own calibrator (not a model-wide one that would serve segment a too)
    assert "model-wide: none (identity)" in row
    assert re.search(r"b: (platt|isotonic) v1, promoted \d+ (s|min) ago", row), row
    assert 'class="badge ok"' in html[html.index('href="/models/clf"') :]
    stats = snapshot_stats(fed, "qa", "*", "1h", "calibrated")
    assert f"<b>{stats.ece:.3f}</b>" in row
    assert f"[{stats.ece_ci_lower:.3f}, {stats.ece_ci_upper:.3f}]" in row
    assert "calibrator promoted" in html  # the recent events


def points(html: str, chart: str, group: str) -> list[tuple[float, float]]:
    """The marker positions drawn in one group of an inline chart (parsed as the XML it is)."""
    svg = re.search(rf'<svg id="{chart}".*?</svg>', html, re.S)
    assert svg is not None, chart
    root = ET.fromstring(svg.group(0))  # noqa: S314  (our own server's output)
    found = root.find(f".//{{http://www.w3.org/2000/svg}}g[@id='{group}']")
    if found is None:
        return []
    uses = found.iter("{http://www.w3.org/2000/svg}use")
    return [(float(u.attrib["x"]), float(u.attrib["y"])) for u in uses]


def test_model_page_draws_exactly_the_labelled_bins(fed: Fed) -> None:
    html = fed.client.get("/models/qa", params={"segment": "b", "window": "1h"}).text
    for score in ("raw", "calibrated"):
        stats = snapshot_stats(fed, "qa", "b", "1h", score)
        solid = [r for r in stats.reliability if r["count"] >= 10]
        tiny = [r for r in stats.reliability if 0 < r["count"] < 10]
        assert len(points(html, "reliability", f"reliability-{score}-bins")) == len(solid) > 3
        assert len(points(html, "reliability", f"reliability-{score}-tiny")) == len(tiny)  # hollow
    raw = snapshot_stats(fed, "qa", "b", "1h", "raw")
    assert [r for r in raw.reliability if 0 < r["count"] < 10]  # the fixture's tiny bins are there
    assert f"calibrated ECE {snapshot_stats(fed, 'qa', 'b', '1h', 'calibrated').ece:.3f}" in html
    assert 'id="histogram"' in html and 'id="history"' in html
    assert 'id="history-calibrated-ece"' in html and 'id="history-raw-ece"' in html
    assert re.search(r'href="/reports/\d+">decision report', html)  # calibrator history links


def test_history_equals_a_recomputation_from_the_raw_rows(fed: Fed, settings: Settings) -> None:
    engine = fed.daemon.engine
    now = fed.clock.now
    p, correct, ts = fed.rows["b"]
    with engine.connect() as conn:
        since, step = views.time_span(conn, "qa", now, settings.evaluation.bucket_seconds)
        periods = views.over_time_points(conn, settings, "qa", "b", since, step, now)
    assert step % settings.evaluation.bucket_seconds == 0 and len(periods) <= views.HISTORY_POINTS
    compared = 0
    for point in periods:
        inside = (ts >= point.start) & (ts < point.start + step)
        assert point.predictions == inside.sum() and point.labelled == inside.sum()
        if inside.any():
            assert point.ece["raw"] == pytest.approx(
                expected_calibration_error(p[inside], correct[inside], 15)
            )
            # served = raw here (identity until the refit, which came after these predictions)
            assert point.accuracy["estimated"] == pytest.approx(p[inside].mean(), rel=1e-9)
            assert point.accuracy["realised"] == pytest.approx(correct[inside].mean(), rel=1e-9)
            lower, upper = point.accuracy["lower"], point.accuracy["upper"]
            assert lower is not None and upper is not None and lower <= p[inside].mean() <= upper
            compared += 1
    assert compared >= 10
    html = fed.client.get("/models/qa", params={"segment": "b", "window": "6h"}).text
    assert "estimated from every served confidence" in html
    advice = re.search(r'<table class="advice">(.*?)</table>', html, re.S)
    assert advice is not None and advice.group(1).count("<tr><td") == len(settings.advice.targets)
    drawn = points(html, "accuracy", "accuracy-estimated")  # one marker per period with predictions
    assert len(drawn) == sum(1 for point in periods if point.accuracy.get("estimated") is not None) >= 10
    served = fed.client.get("/v1/models/qa/advice", params={"segment": "b", "window": "6h"}).json()
    curve = [p for p in served["risk_coverage"] if p["precision"] is not None]
    assert len(points(html, "risk-coverage", "risk-coverage-precision")) == len(curve) >= 5
    advised = [a for a in served["advice"] if a["threshold"] is not None]
    assert len(points(html, "risk-coverage", "risk-coverage-advised")) == len(advised)
    for point in curve:  # each point's threshold is written beside it
        assert f">{point['threshold']:.3g}<" in html


def test_decision_report_page_explains_the_gate(fed: Fed) -> None:
    events = fed.client.get("/v1/events", params={"kind": "calibrator_promoted"}).json()["events"]
    calibrator_id = events[0]["calibrator_id"]
    report = fed.client.get(f"/v1/calibrators/{calibrator_id}/report").json()
    html = fed.client.get(f"/reports/{calibrator_id}").text
    assert "promoted" in html and report["reason"] in html
    assert f"POST /v1/calibrators/{calibrator_id}/rollback" in html  # what to do, in words
    for check in report["gate"]["checks"]:
        assert check["detail"].replace(">", "&gt;") in html
    assert "The improvement is clear of noise" in html
    for name, key in (("before", "reliability_before"), ("after", "reliability_after")):
        drawn = points(html, "report-reliability", f"report-reliability-{name}-bins")
        drawn += points(html, "report-reliability", f"report-reliability-{name}-tiny")
        assert len(drawn) == len([r for r in report[key] if r["count"]]) > 3
    for candidate in report["candidates"]:
        assert f"<td>{candidate['method']}" in html
    table = re.search(r'<table class="advice">(.*?)</table>', html, re.S)
    assert table is not None and table.group(1).count("<tr><td") == len(report["advice"]["targets"])
    assert "it moves when the calibrator changes" in html
    for row in report["advice"]["targets"]:
        assert f"Precision {row['target']:.0%}: " in html


def test_report_svg_is_a_titled_chart_with_ticks_and_ece(fed: Fed) -> None:
    events = fed.client.get("/v1/events", params={"kind": "calibrator_promoted"}).json()["events"]
    response = fed.client.get(
        f"/v1/calibrators/{events[0]['calibrator_id']}/report", params={"format": "svg"}
    )
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(response.text)  # noqa: S314  (our own server's output)
    width = float(root.attrib["width"].removesuffix("pt"))
    assert width >= 360  # was 320 px without title, ticks or ECE
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any("ECE before" in t for t in texts)
    assert {"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"} <= set(texts)  # axis ticks


def test_pages_refer_to_no_other_host(fed: Fed) -> None:
    events = fed.client.get("/v1/events", params={"kind": "calibrator_promoted"}).json()["events"]
    pages = ["/", "/models/qa", "/models/qa?segment=b&window=6h", "/models/clf",
             f"/reports/{events[0]['calibrator_id']}", "/login", "/models/nope"]  # fmt: skip
    css = fed.client.get("/static/calmon.css")
    assert css.status_code == 200 and "url(" not in css.text and "@import" not in css.text
    for page in pages:
        html = fed.client.get(page).text
        links = parse(html)
        assert links.urls, page
        for url in links.urls:
            assert url.startswith(("/", "#", "?")) and not url.startswith("//"), (page, url)
        # namespace names are identifiers, never fetched; nothing else may name a scheme or a host
        stripped = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
        assert "://" not in stripped, (
            page,
            stripped[stripped.index("://") - 80 : stripped.index("://") + 40],
        )


def test_unknown_model_segment_or_window_is_a_404_page_naming_it(fed: Fed) -> None:
    missing = fed.client.get("/models/nope")
    assert missing.status_code == 404 and "no data for model &#39;nope&#39;" in missing.text
    segment = fed.client.get("/models/qa", params={"segment": "zzz"})
    assert segment.status_code == 404 and "no segment &#39;zzz&#39;" in segment.text
    window = fed.client.get("/models/qa", params={"window": "5d"})
    assert window.status_code == 404 and "window must be one of 1h, 6h" in window.text
    assert fed.client.get("/reports/999999").status_code == 404
    assert fed.client.get("/models/bad%00name").status_code == 422


def test_before_the_first_evaluation_the_overview_says_what_to_do(engine: Engine, settings: Settings) -> None:
    daemon = build_daemon(engine, settings, Clock(START))
    with TestClient(daemon.app) as client:
        html = client.get("/").text
    assert "No evaluation has run yet" in html and "calmon evaluates every 60 s" in html
    other = build_daemon(engine, settings, Clock(START), "replica-b")
    assert other.app.state.charts is not daemon.app.state.charts  # no chart crosses between daemons
