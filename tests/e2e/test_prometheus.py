"""End to end with real binaries: calmon daemons, a real Prometheus, a real PostgreSQL."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.support.daemon import Daemon
from tests.support.polling import eventually
from tests.support.prometheus import Prometheus
from tests.support.services import missing_service

RULES = Path(__file__).resolve().parents[2] / "alerts" / "calmon.rules.yml"
FAST = """
evaluation: {interval_seconds: 1, windows: [1h, 24h, 7d], bootstrap_draws: 100}
scheduler: {lease_ttl_seconds: 3, reconcile_interval_seconds: 2}
logging: {access_log: false}
"""


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "calmon.yaml"
    path.write_text(FAST)
    return path


def start_prometheus(targets: list[str]) -> Prometheus:
    try:
        return Prometheus(targets)
    except RuntimeError as exc:
        missing_service(str(exc))
        raise


def send_dataset(url: str, model: str, n: int = 600, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.5, 1.0, n)
    now = time.time()
    records = [
        {
            "model": model,
            "id": f"e{i}",
            "segment": ["web", "api"][i % 2],
            "confidence": float(p[i]),
            "ts": now - 5 * i,
        }
        for i in range(n)
    ]
    assert httpx.post(f"{url}/v1/predictions", json={"predictions": records}, timeout=60).status_code == 200
    truth = rng.random(n) < p - 0.25  # overconfident
    feedback = [{"model": model, "id": f"e{i}", "correct": bool(t)} for i, t in enumerate(truth)]
    assert httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, timeout=60).json()["matched"] == n


def test_prometheus_scrapes_calmon_and_promql_reproduces_the_ece(tmp_path: Path, fast_config: Path) -> None:
    daemon = Daemon(f"sqlite:///{tmp_path / 'e2e.db'}", config=fast_config, log_path=tmp_path / "daemon.log")
    prometheus = None
    try:
        daemon.wait_healthy()
        send_dataset(daemon.base_url, "e2e-model")  # every label arrives at once
        prometheus = start_prometheus([f"127.0.0.1:{daemon.port}"])
        selector = 'model="e2e-model",segment="*",window="7d",score="raw"'
        gauge = prometheus.wait_for(f"calmon_expected_calibration_error{{{selector}}}")
        ece = float(gauge[0]["value"][1])
        assert ece > 0.1  # the dataset is overconfident
        promql = (
            'sum(abs(sum by (bin) (calmon_binned_correct_total{model="e2e-model",score="raw"})'
            ' - sum by (bin) (calmon_binned_confidence_sum_total{model="e2e-model",score="raw"})))'
            ' / sum(calmon_binned_predictions_total{model="e2e-model",score="raw"})'
        )
        from_counters = float(prometheus.wait_for(promql)[0]["value"][1])
        assert from_counters == pytest.approx(ece, abs=1e-9)
        labelled = prometheus.wait_for(f"calmon_labelled_predictions{{{selector}}}")
        assert float(labelled[0]["value"][1]) == 600
        assert prometheus.query('up{job="calmon"}')[0]["value"][1] == "1"
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.stop()


def test_prometheus_scrapes_the_label_free_estimate_the_advice_and_the_floor_alert_selects_it(
    tmp_path: Path,
) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(FAST + "drift: {accuracy_floor: 0.6}\nmodels: {easy: {drift: {accuracy_floor: 0.1}}}\n")
    daemon = Daemon(f"sqlite:///{tmp_path / 'est.db'}", config=config, log_path=tmp_path / "daemon.log")
    prometheus = None
    rng = np.random.default_rng(4)
    try:
        daemon.wait_healthy()
        now = time.time()
        served: dict[str, np.ndarray] = {}
        # all honest (identity serves them); hard and easy mostly wrong, sure mostly right
        for model in ("hard", "easy", "sure"):
            p = rng.beta(20, 1, 800) if model == "sure" else rng.uniform(0.2, 0.5, 800)
            served[model] = p
            records = [
                {"model": model, "id": f"{model}{i}", "confidence": float(p[i]), "ts": now - 3 * i}
                for i in range(800)
            ]
            assert httpx.post(
                f"{daemon.base_url}/v1/predictions", json={"predictions": records}, timeout=60
            ).is_success
            labels = [
                {"model": model, "id": f"{model}{i}", "correct": bool(rng.random() < p[i])}
                for i in range(800 if model == "sure" else 300)
            ]
            assert httpx.post(
                f"{daemon.base_url}/v1/feedback", json={"feedback": labels}, timeout=60
            ).is_success
        prometheus = start_prometheus([f"127.0.0.1:{daemon.port}"])
        selector = 'model="hard",segment="*",window="1h"'
        estimate = float(prometheus.wait_for(f"calmon_estimated_accuracy{{{selector}}}")[0]["value"][1])
        assert estimate == pytest.approx(served["hard"].mean(), abs=1e-9)  # every prediction, labelled or not
        lower = float(prometheus.wait_for(f"calmon_estimated_accuracy_lower{{{selector}}}")[0]["value"][1])
        upper = float(prometheus.wait_for(f"calmon_estimated_accuracy_upper{{{selector}}}")[0]["value"][1])
        assert lower < estimate < upper < 0.6
        assert (
            float(prometheus.wait_for('calmon_accuracy_floor{model="hard",segment="*"}')[0]["value"][1])
            == 0.6
        )
        rule = next(
            r
            for g in yaml.safe_load(RULES.read_text())["groups"]
            for r in g["rules"]
            if r.get("alert") == "CalmonEstimatedAccuracyBelowFloor"
        )
        firing = prometheus.wait_for(rule["expr"])
        assert {(r["metric"]["model"], r["metric"]["window"]) for r in firing} >= {
            ("hard", "1h"),
            ("hard", "7d"),
        }
        assert all(r["metric"]["model"] == "hard" for r in firing)  # easy's floor is 0.1: it stays quiet
        # threshold advice and the risk-coverage curve, as the API serves them
        served_advice = httpx.get(f"{daemon.base_url}/v1/models/sure/advice", params={"window": "1h"}).json()
        advised = served_advice["advice"][0]
        assert advised["target"] == 0.9 and advised["threshold"] is not None
        at = 'model="sure",segment="*",window="1h",target="0.9"'
        assert (
            float(prometheus.wait_for(f"calmon_advised_threshold{{{at}}}")[0]["value"][1])
            == advised["threshold"]
        )
        assert float(prometheus.wait_for(f"calmon_advised_coverage{{{at}}}")[0]["value"][1]) == pytest.approx(
            advised["coverage"]
        )
        panel = 'max by (threshold) (calmon_accept_coverage{model="sure", segment="*", window="1h"})'
        scraped = {r["metric"]["threshold"]: float(r["value"][1]) for r in prometheus.wait_for(panel)}
        expected = {f"{pt['threshold']:.4g}": pt["coverage"] for pt in served_advice["risk_coverage"]}
        assert scraped.keys() == expected.keys() and len(scraped) >= 10
        assert all(scraped[k] == pytest.approx(v) for k, v in expected.items())
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.stop()


def scrape_value(url: str, metric: str) -> float | None:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.TransportError:
        return None
    match = re.search(rf"^{re.escape(metric)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_two_daemons_on_postgres_share_one_leader_and_fail_over(
    pg_url: str, tmp_path: Path, fast_config: Path
) -> None:
    a = Daemon(pg_url, config=fast_config, log_path=tmp_path / "a.log")
    b = Daemon(pg_url, config=fast_config, log_path=tmp_path / "b.log")
    try:
        a.wait_healthy()
        b.wait_healthy()
        send_dataset(a.base_url, "shared-model", n=300)

        def one_leader() -> list[float | None] | None:
            leaders = [scrape_value(d.base_url, "calmon_scheduler_leader") for d in (a, b)]
            return leaders if sorted(leaders, key=lambda x: x or 0.0) == [0.0, 1.0] else None

        leaders = eventually(one_leader, 20, 0.2, "exactly one leader")
        leader, follower = (a, b) if leaders[0] == 1.0 else (b, a)
        leader.wait_ticks(2)  # several evaluation ticks
        evaluate_runs = 'calmon_job_runs_total{outcome="success",task="evaluate"}'
        assert (scrape_value(leader.base_url, evaluate_runs) or 0) >= 2
        assert scrape_value(follower.base_url, evaluate_runs) is None  # each tick ran once: on the leader
        # the follower serves the leader's snapshot
        windows = httpx.get(f"{follower.base_url}/v1/models/shared-model", timeout=10).json()["windows"]
        assert {w["window"] for w in windows} == {"1h", "24h", "7d"}

        leader.process.kill()  # no chance to release the lease
        leader.process.wait()
        killed_at = time.monotonic()
        eventually(
            lambda: scrape_value(follower.base_url, "calmon_scheduler_leader") == 1.0, 15, 0.1, "takeover"
        )
        takeover = time.monotonic() - killed_at
        assert takeover <= 3 + 1 + 1  # lease TTL + one renewal interval + scrape slack
        # it now runs the ticks
        eventually(lambda: (scrape_value(follower.base_url, evaluate_runs) or 0) >= 1, 10, 0.1, "a tick")
    finally:
        a.stop()
        b.stop()
