"""``calmon replay``: a recorded history through the real pipeline on a simulated clock, from JSON
lines, CSV or Parquet, with every decision and its numbers; bad input named by record and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitor.config import load_settings
from monitor.replay import ReplayInputError, read_history, replay

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0


def history(
    minutes: int = 30, per_minute: int = 200, shift_at: int = 10, bias: float = 0.2
) -> list[dict[str, Any]]:
    """Calibrated traffic, then overconfident from ``shift_at``; labels arrive 1-3 minutes late."""
    rng = np.random.default_rng(0)
    records: list[dict[str, Any]] = []
    for minute in range(minutes):
        for i in range(per_minute):
            ts = T0 + minute * 60 + rng.uniform(0, 60)
            p = float(0.5 + 0.5 * rng.beta(3, 1))
            q = p - (bias if minute >= shift_at else 0.0)
            ident = f"p{minute}-{i}"
            records.append(
                {"at": ts, "type": "prediction", "model": "m", "id": ident, "confidence": p, "ts": ts}
            )
            records.append({"at": ts + rng.uniform(60, 180), "type": "feedback", "model": "m", "id": ident,
                            "correct": bool(rng.random() < q)})  # fmt: skip
    return sorted(records, key=lambda r: r["at"])


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def decisions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay")
    config = tmp / "calmon.yaml"
    config.write_text(
        "evaluation: {interval_seconds: 60, windows: [1h], bucket_seconds: 60, bootstrap_draws: 50}\n"
        "recalibration: {min_rows: 1000, methods: [platt, isotonic]}\nlogging: {level: WARNING}\n"
    )
    source = write_jsonl(tmp / "history.jsonl", history())
    out, report = tmp / "decisions.json", tmp / "decisions.md"
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", "--config", str(config), "--input", str(source),
         "--out", str(out), "--report", str(report)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "evaluations in" in result.stdout
    found: dict[str, Any] = json.loads(out.read_text())
    found["markdown"] = report.read_text()
    return found


def test_every_evaluation_is_recorded_with_its_numbers(decisions: dict[str, Any]) -> None:
    assert decisions["evaluations_run"] >= 30
    rows = [e for e in decisions["evaluations"] if e["segment"] == "*" and e["score"] == "calibrated"]
    assert len(rows) == decisions["evaluations_run"] - 1 or len(rows) == decisions["evaluations_run"]
    assert set(rows[0]) >= {"at", "model", "segment", "score", "labelled", "ece", "evidence"}
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)  # the simulated clock, a minute apart
    assert rows[1]["at"] - rows[0]["at"] == 60


def test_the_shift_is_detected_dated_and_repaired_on_the_new_regime(decisions: dict[str, Any]) -> None:
    shift = T0 + 10 * 60
    drift = [
        e
        for e in decisions["events"]
        if e["kind"] == "drift_detected" and e.get("drift_kind") == "calibration" and e["segment"] == "*"
    ]
    assert drift and drift[0]["at"] > shift  # nothing before the shift
    assert abs(drift[0]["change_point"] - shift) <= 180
    promoted = [r for r in decisions["recalibrations"] if r["outcome"] == "promoted"]
    assert promoted, decisions["recalibrations"]
    first = promoted[0]
    assert first["fit_from"] >= first["since"] >= shift - 180  # fitted on the new regime only
    assert first["validation_ece_after"] < first["validation_ece_before"] - 0.02
    assert first["method"] in ("platt", "isotonic") and first["params"]
    assert "| drift_detected |" in decisions["markdown"] and "## Recalibrations" in decisions["markdown"]


def test_csv_and_parquet_histories_replay_like_json_lines(tmp_path: Path) -> None:
    records = history(minutes=6, per_minute=50, shift_at=100)
    settings = load_settings(None, evaluation={"windows": ["1h"], "bootstrap_draws": 50})
    frame = pd.DataFrame(records)
    frame.to_csv(tmp_path / "h.csv", index=False)
    frame.to_parquet(tmp_path / "h.parquet")
    write_jsonl(tmp_path / "h.jsonl", records)
    outputs = [replay(settings, read_history(tmp_path / name)) for name in ("h.jsonl", "h.csv", "h.parquet")]
    labelled = [[e["labelled"] for e in out["evaluations"]] for out in outputs]
    assert labelled[0] == labelled[1] == labelled[2] and max(labelled[0]) == 300
    assert all(out["rejected"] == [] for out in outputs)


def test_bad_history_is_named_by_record_and_field(tmp_path: Path) -> None:
    good = {"at": T0, "type": "prediction", "model": "m", "id": "a", "confidence": 0.7, "ts": T0}
    cases = {
        "no_at": ({**good, "at": None}, "record 2: field 'at'"),
        "type": ({**good, "type": "label"}, "record 2: field 'type'"),
        "ts": ({k: v for k, v in good.items() if k != "ts"}, "record 2: field 'ts'"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(ReplayInputError, match=message):
            read_history(write_jsonl(tmp_path / f"{name}.jsonl", [good, bad]))
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ReplayInputError, match="record 2: not JSON"):
        read_history(tmp_path / "broken.jsonl")
    with pytest.raises(ReplayInputError, match="unknown format"):
        read_history(tmp_path / "h.txt")
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", "--input", str(tmp_path / "broken.jsonl"),
         "--out", "x.json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "record 2: not JSON" in result.stderr


def test_records_the_api_would_refuse_are_reported_not_fatal(tmp_path: Path) -> None:
    records = history(minutes=3, per_minute=20, shift_at=100)
    at = records[4]["at"]
    bad = {"at": at, "type": "prediction", "model": "m", "id": "bad", "confidence": 1.7, "ts": at}
    records.insert(5, bad)
    out = replay(load_settings(None, evaluation={"windows": ["1h"], "bootstrap_draws": 50}), records)
    assert len(out["rejected"]) == 1 and out["rejected"][0]["field"] == "confidence"
