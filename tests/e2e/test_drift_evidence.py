"""The drift detector on a real daemon: evidence that survives kill -9, an alarm with its change point
in the API, the events and /metrics, and a refit on what came after it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.daemon import Daemon
from tests.support.polling import eventually

CONFIG = """
evaluation: {interval_seconds: 1, windows: [1h], bootstrap_draws: 50, bucket_seconds: 1}
recalibration: {min_rows: 1000, methods: [platt, isotonic]}
scheduler: {lease_ttl_seconds: 3}
logging: {access_log: false}
"""


def send(url: str, p: np.ndarray, correct: np.ndarray, prefix: str) -> None:
    now = time.time()
    records = [
        {"model": "e", "id": f"{prefix}{i}", "confidence": float(v), "ts": now - 0.5} for i, v in enumerate(p)
    ]
    assert httpx.post(f"{url}/v1/predictions", json={"predictions": records}, timeout=60).status_code == 200
    feedback = [{"model": "e", "id": f"{prefix}{i}", "correct": bool(c)} for i, c in enumerate(correct)]
    assert httpx.post(f"{url}/v1/feedback", json={"feedback": feedback}, timeout=60).status_code == 200


def traffic(rng: np.random.Generator, n: int, bias: float) -> tuple[np.ndarray, np.ndarray]:
    p = 0.5 + 0.5 * rng.beta(3.0, 1.0, n)
    return p, rng.random(n) < np.clip(p - bias, 0, 1)


def detector(url: str, score: str = "calibrated") -> dict[str, Any] | None:
    detail = httpx.get(f"{url}/v1/models/e", timeout=10).json()
    found = [d for d in detail.get("evidence", []) if d["segment"] == "*" and d["score"] == score]
    return found[0] if found else None


def test_evidence_survives_kill_9_and_the_alarm_dates_the_drift(tmp_path: Path) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(CONFIG)
    url = f"sqlite:///{tmp_path / 'e.db'}"
    rng = np.random.default_rng(5)
    daemon = Daemon(url, config=config, log_path=tmp_path / "first.log")
    try:
        daemon.wait_healthy()
        for k in range(3):
            send(daemon.base_url, *traffic(rng, 500, 0.0), f"c{k}-")
        counted = eventually(
            lambda: (found := detector(daemon.base_url)) is not None and found["labels"] == 1500 and found,
            30, 0.1, "1500 labels bet on",
        )  # fmt: skip
        assert not counted["alarm"]
        daemon.process.kill()  # kill -9: no shutdown, no flush
        daemon.process.wait()
    finally:
        daemon.stop()

    daemon = Daemon(url, config=config, log_path=tmp_path / "second.log")
    try:
        daemon.wait_healthy()
        daemon.wait_ticks(2)
        after = detector(daemon.base_url)
        assert after is not None and after["labels"] == 1500  # continued, not restarted
        assert after["log10_evidence"] == counted["log10_evidence"]
        shift = time.time()
        for k in range(8):
            send(daemon.base_url, *traffic(rng, 500, 0.15), f"d{k}-")
            daemon.wait_ticks(1)

        def drift() -> list[dict[str, Any]]:
            found = httpx.get(f"{daemon.base_url}/v1/events", params={"kind": "drift_detected"}).json()
            return [
                e for e in found["events"] if e["payload"]["kind"] == "calibration" and e["segment"] == "*"
            ]

        (event,) = eventually(drift, 60, 0.2, "the drift alarm")
        assert shift - 5 <= event["payload"]["change_point"] <= time.time()
        crossing = event["payload"]["crossings"][0]
        assert crossing["window"] == "evidence" and crossing["value"] >= crossing["threshold"] == 5.0
        metrics = httpx.get(f"{daemon.base_url}/metrics", timeout=10).text
        assert (
            'calmon_drift_evidence_threshold_log10{model="e",score="calibrated",segment="*"} 5.0' in metrics
        )

        def promoted() -> list[dict[str, Any]]:
            found = httpx.get(f"{daemon.base_url}/v1/events", params={"kind": "calibrator_promoted"})
            return list(found.json()["events"])

        (promotion,) = eventually(promoted, 60, 0.2, "a promotion fitted after the change point")
        report = httpx.get(f"{daemon.base_url}/v1/calibrators/{promotion['calibrator_id']}/report").json()
        assert (
            report["trigger"] == "drift"
            and report["data"]["fit_start"] >= report["data"]["since"] >= shift - 5
        )
        restarted = eventually(
            lambda: (found := detector(daemon.base_url)) is not None and found["epoch"] > shift and found,
            30, 0.2, "the evidence restarted at the promotion",
        )  # fmt: skip
        assert not restarted["alarm"]
        assert re.search(r'calmon_drift_alarm\{model="e",score="raw",segment="\*"\} 1\.0', httpx.get(
            f"{daemon.base_url}/metrics", timeout=10).text)  # fmt: skip
    finally:
        daemon.stop()
