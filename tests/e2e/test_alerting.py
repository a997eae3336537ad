"""End to end on loopback with real binaries: calmon -> Prometheus (shipped rules) -> Alertmanager
(shipped routing) -> a webhook receiver, firing on drift and resolved after a promotion; and every
shipped dashboard query returns data.

Only the timings are changed for the test: every rule's ``for`` is shortened and Alertmanager's
group waits are 1 s. Thresholds, expressions, routing tree and inhibitions are the shipped ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from monitor import dashboards
from tests.support import alertmanager as am
from tests.support.daemon import Daemon
from tests.support.polling import eventually
from tests.support.prometheus import Prometheus
from tests.support.promql import expand
from tests.support.receivers import HttpReceiver
from tests.support.services import missing_service

ROOT = Path(__file__).resolve().parents[2]
MODEL = "qa-bot"
INGEST, SCRAPE, ADMIN = "ingest-token-e2e", "scrape-token-e2e", "admin-token-e2e-oncall"


def shortened_rules(tmp_path: Path) -> Path:
    """The shipped rules with every ``for`` shortened to 2 s."""
    rules = yaml.safe_load((ROOT / "alerts" / "calmon.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = tmp_path / "calmon.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def alertmanager_config(webhook: str) -> dict[str, Any]:
    """The shipped routing tree and inhibitions; every receiver replaced by the test's webhook."""
    config = yaml.safe_load((ROOT / "alerts" / "alertmanager.yml").read_text())
    config["global"] = {"resolve_timeout": "5m"}
    config["receivers"] = [
        {"name": receiver["name"], "webhook_configs": [{"url": webhook, "send_resolved": True}]}
        for receiver in config["receivers"]
    ]
    config["route"] |= {"group_wait": "1s", "group_interval": "1s"}
    return config


def daemon_config(tmp_path: Path, hook: str) -> Path:
    path = tmp_path / "calmon.yaml"
    path.write_text(
        f"""
evaluation: {{interval_seconds: 1, windows: [1h, 24h], bootstrap_draws: 200}}
drift: {{consecutive: 3, min_labelled: 500, cooldown_seconds: 3600, accuracy_floor: 0.05}}
advice: {{targets: [0.3, 0.9]}}
recalibration: {{on_drift: false, serving_refresh_seconds: 1, bootstrap_draws: 300, max_rows: 3000}}
scheduler: {{lease_ttl_seconds: 3}}
logging: {{access_log: false}}
auth:
  protect_metrics: true
  tokens:
    - {{name: app, token: {INGEST}, scopes: [ingest]}}
    - {{name: prometheus, token: {SCRAPE}, scopes: [read]}}
    - {{name: oncall, token: {ADMIN}, scopes: [admin]}}
notifications:
  - {{kind: webhook, url: "{hook}", events: [drift_detected, calibrator_promoted]}}
"""
    )
    return path


def post(url: str, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{route}", json=body, headers={"authorization": f"Bearer {INGEST}"}, timeout=60)


def inject_drift(url: str) -> None:
    """A calibrated past (the previous hour, unlabelled: PSI needs a previous period), then an
    overconfident present whose labels arrive; one malformed record."""
    rng = np.random.default_rng(11)
    now = time.time()
    past = rng.uniform(0.3, 0.97, 1000)
    records = [
        {
            "model": MODEL,
            "id": f"past{i}",
            "segment": "billing",
            "confidence": float(p),
            "ts": now - 3600 - 60 - i,
        }
        for i, p in enumerate(past)
    ]
    q = rng.uniform(0.3, 0.97, 3000)
    overconfident = 1.0 / (1.0 + np.exp(-2.5 * np.log(q / (1 - q))))
    correct = rng.random(3000) < q
    records += [
        {"model": MODEL, "id": f"now{i}", "segment": ["billing", "search"][i % 2], "confidence": float(p),
         "ts": now - 1 - i * 0.1}
        for i, p in enumerate(overconfident)
    ]  # fmt: skip
    records.append({"model": MODEL, "id": "bad", "confidence": 1.7})
    response = post(url, "/v1/predictions", {"predictions": records})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 4000 and response.json()["rejected"][0]["field"] == "confidence"
    feedback = [{"model": MODEL, "id": f"now{i}", "correct": bool(c)} for i, c in enumerate(correct)]
    assert post(url, "/v1/feedback", {"feedback": feedback}).json()["matched"] == 3000


def wait_until(check: Any, timeout: float, what: str) -> Any:
    return eventually(check, timeout, 0.5, what)


def start(factory: Any, hint: str) -> Any:
    try:
        return factory()
    except RuntimeError as exc:
        missing_service(f"{exc} ({hint})")
        raise


def test_drift_pages_through_prometheus_and_alertmanager_and_fills_every_dashboard(tmp_path: Path) -> None:
    if am.binary() is None:
        missing_service(f"alertmanager not found; {am.INSTALL_HINT}")
    receiver, notifications = HttpReceiver(), HttpReceiver()
    daemon = Daemon(
        f"sqlite:///{tmp_path / 'calmon.db'}",
        config=daemon_config(tmp_path, notifications.url),
        log_path=tmp_path / "daemon.log",
    )
    alertmanager = prometheus = None
    try:
        daemon.wait_healthy()
        alertmanager = am.Alertmanager(alertmanager_config(receiver.url))
        token_file = tmp_path / "scrape-token"
        token_file.write_text(SCRAPE)
        prometheus = start(
            lambda: Prometheus(
                [f"127.0.0.1:{daemon.port}"],
                extra_config=(
                    f"rule_files: [{str(shortened_rules(tmp_path))!r}]\n"
                    "alerting:\n  alertmanagers:\n    - static_configs:\n"
                    f"        - targets: ['127.0.0.1:{alertmanager.port}']\n"
                ),
                scrape_options=f"    authorization: {{type: Bearer, credentials_file: '{token_file}'}}\n",
            ),
            "prometheus",
        )
        started = time.time()
        assert httpx.get(f"{daemon.base_url}/metrics").status_code == 401  # the scrape needs its token
        prometheus.wait_for('up{job="calmon"} == 1', timeout=30)

        inject_drift(daemon.base_url)

        # 1. Prometheus evaluates the shipped rule and fires
        firing = prometheus.wait_for(
            f'ALERTS{{alertname="CalmonCalibrationDrift", alertstate="firing", model="{MODEL}"}}', timeout=90
        )
        assert {a["metric"]["segment"] for a in firing} >= {"*"}
        assert {a["metric"]["severity"] for a in firing} == {"warning"}

        # 2. Alertmanager routes it (shipped tree: warning -> the Slack receiver, here a webhook)
        def delivered() -> list[dict[str, Any]]:
            return [
                alert
                for body in receiver.requests
                for alert in body["alerts"]
                if alert["labels"]["alertname"] == "CalmonCalibrationDrift" and alert["status"] == "firing"
            ]

        alerts = wait_until(delivered, 60, "CalmonCalibrationDrift delivered to the webhook")
        assert all(a["labels"]["model"] == MODEL for a in alerts)
        assert alerts[0]["annotations"]["runbook_url"].endswith("docs/runbooks/CalmonCalibrationDrift.md")
        assert "exceeds drift.tolerance" in alerts[0]["annotations"]["description"]
        bodies = [b for b in receiver.requests if any(a in b["alerts"] for a in alerts)]
        assert bodies[0]["receiver"] == "ml-platform-slack"
        assert {"alertname", "model", "segment"} == set(bodies[0]["groupLabels"])

        # counters of known series are exported from 0, so increase() will see the promotion
        before = prometheus.query(f'calmon_recalibrations_total{{model="{MODEL}", outcome="promoted"}}')
        assert before and {r["value"][1] for r in before} == {"0"}

        # 3. the on-call engineer recalibrates (automatic recalibration is off in this test): the
        # promotion stops the judgement of windows that still hold old predictions, the alert resolves
        response = httpx.post(
            f"{daemon.base_url}/v1/models/{MODEL}/recalibrate",
            headers={"authorization": f"Bearer {ADMIN}"},
            timeout=120,
        )
        assert response.status_code == 200 and response.json()["outcome"] == "promoted", response.text

        def resolved() -> list[dict[str, Any]]:
            return [
                alert
                for body in receiver.requests
                for alert in body["alerts"]
                if alert["labels"]["alertname"] == "CalmonCalibrationDrift" and alert["status"] == "resolved"
            ]

        wait_until(resolved, 60, "CalmonCalibrationDrift resolved at the webhook")
        assert not prometheus.query(f'ALERTS{{alertname="CalmonCalibrationDrift", model="{MODEL}"}}')

        # 4. every dashboard query returns data for the injected model; range queries step by 2 s, so
        # wait for a scrape a full step after the promotion to fall inside their last step
        resolved_at = time.time()
        wait_until(
            lambda: float(prometheus.query("max(timestamp(up))")[0]["value"][1]) >= resolved_at + 2,
            30,
            "a scrape one range step after the promotion",
        )
        check_every_dashboard_query(prometheus, started)
    finally:
        for part in (prometheus, alertmanager):
            if part is not None:
                part.stop()
        daemon.stop()
        receiver.stop()
        notifications.stop()


def check_every_dashboard_query(prometheus: Prometheus, started: float) -> None:
    now = time.time()
    values = {
        "$model": MODEL,
        "$segment": "*",
        "$window": "1h",
        "$score": "raw|calibrated",
        "$job": "calmon",
        "$__rate_interval": "15s",
        "$__range": f"{int(now - started) + 5}s",
    }
    empty = []
    checked = 0
    for uid, dashboard in dashboards.dashboards().items():
        instant = {
            query["expr"]
            for panel in dashboard["panels"]
            for query in panel["targets"]
            if query.get("instant")
        }
        for where, expr in dashboards.queries(dashboard):
            promql = expand(expr, values)
            if expr in instant:
                result = prometheus.query(promql)
            else:  # what Grafana does for time series and annotations: a range query over the dashboard
                result = prometheus.query_range(promql, started, now, step=2)
            checked += 1
            if "calmon_reliability_bin_accuracy_ratio" in expr:  # bins padded to sort as strings
                bins = [r["metric"]["bin"] for r in result]
                assert bins and sorted(bins) == sorted(bins, key=int) and {len(b) for b in bins} == {2}
            series = [r for r in result if r.get("value") or r.get("values")]
            mentions_model = "$model" in expr
            if not series or (
                mentions_model and not any(r["metric"].get("model", MODEL) == MODEL for r in series)
            ):
                empty.append(f"{uid} {where}: {promql}")
    assert checked > 40
    assert not empty, "queries without data:\n" + "\n".join(empty)
