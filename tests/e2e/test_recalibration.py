"""The whole loop on real daemons: drift -> one recalibration -> promotion served everywhere, notified."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from monitor.calibration.metrics import expected_calibration_error
from tests.support.daemon import Daemon
from tests.support.polling import eventually
from tests.support.receivers import HttpReceiver, SmtpReceiver

LOOP = """
evaluation: {interval_seconds: 1, windows: [1h, 24h], bootstrap_draws: 200}
drift: {consecutive: 2, min_labelled: 500, cooldown_seconds: 3600}
recalibration: {serving_refresh_seconds: 1, bootstrap_draws: 300, max_rows: 3000}
scheduler: {lease_ttl_seconds: 3}
logging: {access_log: false}
"""


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.3, 0.97, n)
    return 1.0 / (1.0 + np.exp(-2.5 * np.log(q / (1 - q)))), rng.random(n) < q


def send_predictions(url: str, p: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    now = time.time()
    records = [
        {"model": "loop", "id": f"{prefix}{i}", "confidence": float(v), "ts": now - 1 - i * 0.1}
        for i, v in enumerate(p)
    ]
    response = httpx.post(f"{url}/v1/predictions", json={"predictions": records}, timeout=60)
    assert response.status_code == 200
    return list(response.json()["results"])


def send_labels(url: str, correct: np.ndarray, prefix: str) -> None:
    feedback = [{"model": "loop", "id": f"{prefix}{i}", "correct": bool(c)} for i, c in enumerate(correct)]
    assert httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, timeout=60).status_code == 200


def send(url: str, p: np.ndarray, correct: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    results = send_predictions(url, p, prefix)
    send_labels(url, correct, prefix)
    return results


def calibrated_stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 0.97, n)
    return p, rng.random(n) < p


def events(url: str, kind: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{url}/v1/events", params={"kind": kind}, timeout=10).json()["events"])


def wait_for_event(url: str, kind: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    return eventually(lambda: events(url, kind), timeout, 0.2, f"a {kind} event")


@pytest.fixture
def receivers() -> Iterator[tuple[HttpReceiver, HttpReceiver, SmtpReceiver]]:
    made = (HttpReceiver(), HttpReceiver(status=500), SmtpReceiver())
    yield made
    for receiver in made:
        receiver.stop()


def test_drift_to_promotion_on_a_real_daemon_with_notifications(
    tmp_path: Path, receivers: tuple[HttpReceiver, HttpReceiver, SmtpReceiver]
) -> None:
    hook, broken, smtp = receivers
    config = tmp_path / "calmon.yaml"
    config.write_text(
        LOOP
        + f"""notifications:
  - {{kind: webhook, url: "{hook.url}", events: [drift_detected, calibrator_promoted]}}
  - {{kind: webhook, url: "{broken.url}", events: [calibrator_promoted],
      max_attempts: 2, backoff_seconds: 0.05}}
  - {{kind: email, smtp_host: 127.0.0.1, smtp_port: {smtp.port}, sender: calmon@example.invalid,
      recipients: [oncall@example.invalid], events: [calibrator_promoted]}}
"""
    )
    daemon = Daemon(f"sqlite:///{tmp_path / 'loop.db'}", config=config, log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        # 1. the model starts well calibrated: several ticks, no drift
        p_good, c_good = calibrated_stream(2000, seed=5)
        first = send(daemon.base_url, p_good, c_good, "good")
        assert {r["calibrator_version"] for r in first} == {"identity"}
        daemon.wait_ticks(3)
        assert events(daemon.base_url, "drift_detected") == []
        # 2. its confidences turn overconfident; the labels are late: no calibration drift without them
        p, c = overconfident(3000, seed=0)
        send_predictions(daemon.base_url, p, "old")
        daemon.wait_ticks(3)
        assert not any(
            e["payload"]["kind"] == "calibration" for e in events(daemon.base_url, "drift_detected")
        )
        assert events(daemon.base_url, "calibrator_promoted") == []
        # 3. the labels arrive: drift, one recalibration, promotion
        send_labels(daemon.base_url, c, "old")
        promoted = wait_for_event(daemon.base_url, "calibrator_promoted")
        assert promoted[0]["payload"]["version"] == "1"
        kinds = {e["payload"]["kind"] for e in events(daemon.base_url, "drift_detected")}
        assert "calibration" in kinds and "raw_calibration" in kinds
        p_new, c_new = overconfident(3000, seed=1)
        results = send(daemon.base_url, p_new, c_new, "new")
        assert {r["calibrator_version"] for r in results} == {"1"}
        calibrated = np.array([r["calibrated_confidence"] for r in results])
        assert expected_calibration_error(p_new, c_new) > 0.1
        assert expected_calibration_error(calibrated, c_new) < 0.05
        report = httpx.get(f"{daemon.base_url}/v1/calibrators/{promoted[0]['calibrator_id']}/report").json()
        assert report["trigger"] == "drift" and report["gate"]["promote"] is True
        eventually(
            lambda: smtp.messages and broken.attempts >= 2 and len(hook.requests) >= 2, 10, 0.1, "deliveries"
        )
        assert {r["event"] for r in hook.requests} == {"drift_detected", "calibrator_promoted"}
        assert "calibrator_promoted" in smtp.messages[0].content.decode()
        metrics = httpx.get(f"{daemon.base_url}/metrics").text
        assert 'calmon_recalibrations_total{model="loop",outcome="promoted",segment="*"} 1.0' in metrics
        assert re.search(r'calmon_notifications_total\{kind="webhook",outcome="failed"\} [1-9]', metrics)
        assert daemon.process.poll() is None  # a failing receiver never hurt the daemon
    finally:
        daemon.stop()


def test_two_daemons_one_drift_one_recalibration_served_by_both(pg_url: str, tmp_path: Path) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(LOOP)
    a = Daemon(pg_url, config=config, log_path=tmp_path / "a.log")
    b = Daemon(pg_url, config=config, log_path=tmp_path / "b.log")
    try:
        a.wait_healthy()
        b.wait_healthy()
        p, c = overconfident(3000, seed=2)
        send(a.base_url, p, c, "x")
        promoted = wait_for_event(a.base_url, "calibrator_promoted")
        served: dict[int, float] = {}

        def both_serve_version_1() -> bool:
            for daemon in (a, b):
                body = httpx.post(
                    f"{daemon.base_url}/v1/calibrate",
                    json={"records": [{"model": "loop", "confidence": 0.9}]},
                ).json()
                if body["results"][0]["calibrator_version"] == "1":
                    served[daemon.port] = body["results"][0]["calibrated_confidence"]
            return len(served) == 2

        eventually(both_serve_version_1, 1 + 2, 0.1, "both replicas to serve version 1")  # refresh + slack
        assert len(set(served.values())) == 1  # both replicas, the same calibrator
        a.wait_ticks(3)  # more evaluation ticks: the drift episode must not start another run
        assert len(events(b.base_url, "calibrator_promoted")) == 1
        for daemon in (a, b):  # leader and follower export the same drift flags and calibrator change
            text = httpx.get(f"{daemon.base_url}/metrics").text
            assert re.search(
                r'calmon_drift_detected\{kind="calibration",model="loop",segment="\*"\} [01]', text
            )
            assert 'calmon_window_calibrator_changed{model="loop",segment="*",window="1h"} 1.0' in text
        assert len(events(b.base_url, "recalibration_started")) == 1
        assert promoted[0]["payload"]["trigger"] == "drift"
    finally:
        a.stop()
        b.stop()
