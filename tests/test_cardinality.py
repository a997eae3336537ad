"""Hostile cardinality on one real daemon: 100k distinct segments on one model and 10k models with 3
predictions each. The caps (``limits.max_models``, ``evaluation.max_segments``) keep the leader's
memory, the exposition and the tick bounded by configuration, not by what clients send."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from monitor.store.segments import TRACKED_BEYOND_CAP
from tests.support.daemon import Daemon
from tests.support.polling import eventually

RSS_BOUND_MIB = 500  # documented in docs/operations.md ("Capacity and caps")
METRICS_BOUND_BYTES = 5_000_000
TICK_BOUND_SECONDS = 2.0


def evaluations(url: str) -> tuple[float, float, int]:
    """(evaluations run, their total seconds, /metrics size in bytes) on the leader."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    count = re.search(r'^calmon_job_duration_seconds_count\{task="evaluate"\} (\S+)$', text, re.MULTILINE)
    total = re.search(r'^calmon_job_duration_seconds_sum\{task="evaluate"\} (\S+)$', text, re.MULTILINE)
    return (
        float(count.group(1)) if count else 0.0,
        float(total.group(1)) if total else 0.0,
        len(text.encode()),
    )


def test_100k_segments_and_10k_models_stay_within_the_configured_bounds(tmp_path: Path) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text("evaluation: {interval_seconds: 3}\nlogging: {access_log: false, level: WARNING}\n")
    daemon = Daemon(f"sqlite:///{tmp_path / 'calmon.db'}", config=config, log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        url, now = daemon.base_url, time.time()
        with httpx.Client(timeout=120) as client:
            for start in range(0, 100_000, 10_000):  # one model, a new segment on every prediction
                batch = range(start, start + 10_000)
                records = [
                    {"model": "big", "id": f"s{i}", "segment": f"seg-{i}", "confidence": 0.5 + (i % 50) / 100}
                    | {"ts": now - 60}
                    for i in batch
                ]
                assert client.post(f"{url}/v1/predictions", json={"predictions": records}).status_code == 200
                labels = [{"model": "big", "id": f"s{i}", "correct": i % 3 > 0} for i in batch]
                assert client.post(f"{url}/v1/feedback", json={"feedback": labels}).status_code == 200
            refused = 0
            for start in range(0, 10_000, 1000):  # 10k models, 3 predictions each
                records = [{"model": f"m{j}", "id": f"{j}-{k}", "confidence": 0.7, "ts": now - 60}
                           for j in range(start, start + 1000) for k in range(3)]  # fmt: skip
                response = client.post(f"{url}/v1/predictions", json={"predictions": records})
                assert response.status_code in (200, 422)
                refused += len(response.json()["rejected"])
        assert refused == (10_000 - 99) * 3  # "big" and 99 others fill limits.max_models = 100
        first = evaluations(url)[0]
        eventually(lambda: evaluations(url)[0] >= first + 2, 60, 0.5, "two evaluations of the full load")
        runs, seconds, _ = evaluations(url)
        eventually(lambda: evaluations(url)[0] >= runs + 2, 60, 0.5, "two more evaluations")
        runs_after, seconds_after, size = evaluations(url)
        tick = (seconds_after - seconds) / (runs_after - runs)
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
        peak_rss_mib = (
            int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
        )
        detail = httpx.get(f"{url}/v1/models/big", timeout=30).json()
        segments = {w["segment"] for w in detail["windows"]}
    finally:
        daemon.stop()
    assert segments == {f"seg-{i}" for i in range(50)} | {"other", "*"}  # the first 50 folded, then other
    # the API says where the rest went, and lists the series, not 100k segments
    assert detail["segment_cap"] == {  # counted up to a bound: the segments table stays bounded too
        "max_segments": 50,
        "segments_folded_into_other": TRACKED_BEYOND_CAP,
        "segments_counted_up_to": TRACKED_BEYOND_CAP,
    }
    assert [s["segment"] for s in detail["segments"]] == sorted([f"seg-{i}" for i in range(50)] + ["other"])
    assert sum(s["predictions"] for s in detail["segments"]) == 100_000
    assert size < METRICS_BOUND_BYTES, size
    assert tick < TICK_BOUND_SECONDS, tick
    assert peak_rss_mib < RSS_BOUND_MIB, peak_rss_mib
