"""A healthy calmon scraped by a real Prometheus with the shipped rules, unmodified: no alert pending or
firing, evaluation after evaluation (the counters exist at 0 from the first scrape)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.daemon import Daemon
from tests.support.polling import eventually, holds
from tests.support.prometheus import Prometheus
from tests.support.services import missing_service

ROOT = Path(__file__).resolve().parents[2]


def send_calibrated_traffic(url: str, model: str, n: int = 2000) -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.3, 0.97, n)
    now = time.time()
    records = [
        {"model": model, "id": f"h{i}", "confidence": float(v), "ts": now - 30 - i * 0.01}
        for i, v in enumerate(p)
    ]
    assert httpx.post(f"{url}/v1/predictions", json={"predictions": records}, timeout=60).status_code == 200
    truth = rng.random(n) < p
    feedback = [{"model": model, "id": f"h{i}", "correct": bool(c)} for i, c in enumerate(truth)]
    assert httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, timeout=60).json()["matched"] == n


def test_a_healthy_daemon_raises_no_alert_under_the_shipped_rules(tmp_path: Path) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(
        "evaluation: {interval_seconds: 1, windows: [1h, 24h], bootstrap_draws: 200}\n"
        "scheduler: {lease_ttl_seconds: 3}\nlogging: {access_log: false}\n"
    )
    daemon = Daemon(f"sqlite:///{tmp_path / 'calmon.db'}", config=config, log_path=tmp_path / "daemon.log")
    prometheus = None
    try:
        daemon.wait_healthy()
        send_calibrated_traffic(daemon.base_url, "steady")
        daemon.wait_ticks(2)
        try:
            prometheus = Prometheus(
                [f"127.0.0.1:{daemon.port}"],
                extra_config=f"rule_files: [{str(ROOT / 'alerts' / 'calmon.rules.yml')!r}]\n",
            )
        except RuntimeError as exc:
            missing_service(str(exc))
        prometheus.wait_for('up{job="calmon"} == 1', timeout=30)
        prometheus.wait_for('calmon_recalibrations_total{model="steady", outcome="failed"} == 0', timeout=30)
        evaluated = prometheus.wait_for(
            'calmon_labelled_predictions{model="steady", score="calibrated"} >= 1000'
        )
        assert evaluated

        def no_alert() -> None:
            alerts = prometheus.query("ALERTS")  # pending ones included
            assert alerts == [], [a["metric"] for a in alerts]

        # Until Prometheus's first scrape, CalmonDown is rightly pending (nothing answered yet): give
        # the rules one evaluation after the data arrived, then nothing may pend or fire.
        eventually(lambda: prometheus.query("ALERTS") == [], 5, 0.2, "the rules to see the first scrape")
        assert holds(no_alert, 12) >= 20  # a dozen rule evaluations (evaluation_interval 1s)
        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        evaluated_rules = [
            r for g in rules for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")
        ]
        assert len(evaluated_rules) == sum(len(g["rules"]) for g in rules) >= 13  # every rule ran, none fired
        assert all(r["health"] == "ok" and r["state"] == "inactive" for g in rules for r in g["rules"])
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.stop()
