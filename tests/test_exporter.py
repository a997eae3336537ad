"""The exposition: promtool-clean on a real scrape, and pinned by a golden file for a fixed dataset."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine

from monitor.config import Settings
from monitor.evaluation.snapshot import Snapshot, SnapshotHolder
from monitor.evaluation.windows import WindowSpec, evaluate
from monitor.exporter import BinnedCounters, SnapshotCollector
from monitor.store.aggregates import aggregate_pending
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.telemetry import ServiceMetrics
from monitor.textformat import render
from tests.support.harness import build_daemon
from tests.support.services import require_binary

GOLDEN = Path(__file__).with_name("golden") / "exposition.txt"
NOW = 1_800_000_000.0


def fixed_dataset(engine: Engine) -> BinnedCounters:
    rng = np.random.default_rng(2024)
    rows = []
    for i in range(300):
        p = round(float(rng.uniform(0.3, 1.0)), 6)
        rows.append(
            PredictionRow(
                "golden-model",
                f"g{i}",
                ["search", "chat"][i % 2],
                NOW - 30 * i,
                "confidence",
                p,
                None,
                None,
                round(p * 0.9, 6),
                "1",
            )
        )
    truth = rng.random(300) < 0.7
    binned = BinnedCounters(15)
    with engine.begin() as conn:
        insert_predictions(conn, rows, now=NOW)
        apply_feedback(
            conn, [FeedbackItem("golden-model", f"g{i}", bool(truth[i]), None) for i in range(250)], NOW
        )
        binned.add(aggregate_pending(conn, 300, 120).deltas)
    return binned


def test_golden_exposition(sqlite_url: str) -> None:
    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import upgrade

    engine = create_store_engine(sqlite_url)
    upgrade(engine)
    binned = fixed_dataset(engine)
    with engine.connect() as conn:
        stats = evaluate(
            conn,
            [WindowSpec("1h", 3600), WindowSpec("24h", 86400)],
            NOW,
            300,
            120,
            15,
            n_boot=200,
            advice_targets=lambda model, segment: [0.3, 0.6, 0.9],
            advice_curve=[0.3, 0.6, 0.9],
        )
    engine.dispose()
    holder = SnapshotHolder()
    holder.set(
        Snapshot(
            NOW,
            stats,
            [{"model": "golden-model", "segment": "*", "version": "identity", "method": "identity"}],
            evidence=[
                {
                    "model": "golden-model",
                    "segment": "*",
                    "score": "calibrated",
                    "log10_evidence": 5.25,
                    "log10_threshold": 5.0,
                    "alarm": True,
                    "alarm_since": NOW,
                    "change_point": NOW - 1800,
                    "labels": 250,
                    "epoch": 0.0,
                },
                {
                    "model": "golden-model",
                    "segment": "*",
                    "score": "raw",
                    "log10_evidence": None,
                    "log10_threshold": 5.0,
                    "alarm": False,
                    "alarm_since": None,
                    "change_point": None,
                    "labels": 0,
                    "epoch": 0.0,
                },
            ],
        )
    )
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(holder, binned, lambda model, segment: 0.8))  # drift.accuracy_floor
    text = generate_latest(registry).decode()
    assert render(registry).decode() == text  # the snapshot's renderer writes the library's bytes
    text = "\n".join(_round_values(line) for line in text.splitlines()) + "\n"
    if os.environ.get("CALMON_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed; review, then CALMON_UPDATE_GOLDEN=1 to accept"


def _round_values(line: str) -> str:
    """Pin values to 10 significant digits so float noise across platforms does not matter."""
    if line.startswith("#") or " " not in line:
        return line
    name, value = line.rsplit(" ", 1)
    try:
        return f"{name} {float(value):.10g}"
    except ValueError:
        return line


def test_promtool_check_metrics_on_a_real_scrape(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    tool = require_binary("promtool", "prometheus")
    parts = build_daemon(engine, make_settings(), lambda: NOW, "replica-x")
    rng = np.random.default_rng(5)
    with TestClient(parts.app) as client:
        records = [
            {
                "model": "m",
                "id": f"x{i}",
                "segment": ["a", "b"][i % 2],
                "confidence": float(rng.uniform(0.4, 1)),
                "ts": NOW - 10 * i,
            }
            for i in range(200)
        ]
        records.append({"model": "m", "id": "bad", "confidence": 2})
        assert client.post("/v1/predictions", json={"predictions": records}).status_code == 200
        feedback = [{"model": "m", "id": f"x{i}", "correct": bool(rng.random() < 0.6)} for i in range(150)]
        assert client.post("/v1/feedback", json={"feedback": feedback}).status_code == 200
        parts.scheduler.renew_lease()
        parts.scheduler.evaluate_once()
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    for family in (
        "calmon_expected_calibration_error{",
        "calmon_binned_correct_total{",
        "calmon_window_confidence_bucket{",
        "calmon_rejected_records_total{",
        "calmon_http_request_duration_seconds_bucket{",
    ):
        assert family in scrape.text, family
    result = subprocess.run(
        [tool, "check", "metrics"], input=scrape.text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_known_models_start_their_counters_at_zero() -> None:
    """A counter born at 1 hides its first event from increase(); known models are created at 0."""
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.initialise(["qa", "chat", "qa"])
    get = registry.get_sample_value
    assert get("calmon_recalibrations_total", {"model": "qa", "segment": "*", "outcome": "failed"}) == 0
    assert get("calmon_recalibrations_total", {"model": "chat", "segment": "*", "outcome": "rejected"}) == 0
    assert get("calmon_feedback_total", {"model": "qa", "outcome": "matched"}) == 0
    assert get("calmon_predictions_total", {"model": "qa"}) == 0
    # per-segment and rare outcomes are not pre-created: the live part is rendered per scrape
    assert (
        get("calmon_recalibrations_total", {"model": "qa", "segment": "billing", "outcome": "failed"}) is None
    )
    assert get("calmon_feedback_total", {"model": "qa", "outcome": "conflict"}) is None
    metrics.recalibrations.labels("qa", "*", "failed").inc()
    metrics.initialise(["qa"])  # seeing it again never resets it
    assert get("calmon_recalibrations_total", {"model": "qa", "segment": "*", "outcome": "failed"}) == 1
