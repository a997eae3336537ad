"""Settings: YAML < environment < CLI overrides, validation before start, masked printing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.config import ConfigError, load_settings, parse_duration

CONFIG = """
database_url: postgresql+psycopg://calmon:s3cret-pass@db.internal:5432/calmon
port: 9000
evaluation: {windows: [1h, 7d], ece_bins: 10}
drift: {ece_threshold: 0.04}
models: {qa-bot: {drift: {ece_threshold: 0.03}, token_aggregation: min, max_segments: 20}}
auth: {tokens: [{name: app, token_env: CALMON_TOKEN_APP, scopes: [ingest]}]}
notifications: [{kind: slack, url: "https://hooks.example.invalid/T000/B000/XXXX", events: [drift_detected]}]
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CALMON_TOKEN_APP", "app-token-abcdefghijklmnop")
    path = tmp_path / "calmon.yaml"
    path.write_text(CONFIG)
    return path


def test_defaults_serve_the_embedded_case(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.url() == "sqlite:///./calmon.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.evaluation.windows == ["1h", "24h", "7d"]
    assert settings.auth.tokens == []


def test_yaml_then_env_then_overrides(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(config_file)
    assert settings.port == 9000
    assert settings.evaluation.windows == ["1h", "7d"]
    assert settings.model_config_for("qa-bot").token_aggregation == "min"
    assert settings.model_config_for("unknown").token_aggregation == "mean"
    assert settings.auth.tokens[0].secret() == "app-token-abcdefghijklmnop"
    monkeypatch.setenv("CALMON_PORT", "9100")
    monkeypatch.setenv("CALMON_DRIFT__ECE_THRESHOLD", "0.07")
    settings = load_settings(config_file)
    assert settings.port == 9100 and settings.drift.ece_threshold == 0.07
    assert settings.drift.min_labelled == 500  # untouched keys of the section keep their defaults
    assert load_settings(config_file, port=9200, host="::1").port == 9200


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("port: 70000", "port"),
        ("evaluation: {windows: [1 hour]}", "evaluation.windows"),
        ("evaluation: {fine_bins: 120, ece_bins: 7}", "evaluation"),
        ("drift: {ece_threshold: 2}", "drift.ece_threshold"),
        ("unknown_key: 1", "unknown_key"),
        ("database_url: mysql://x", "database_url"),
        ("auth: {tokens: [{name: a, token_env: CALMON_NOT_SET_ANYWHERE, scopes: [read]}]}", "auth.tokens.0"),
        ("auth: {tokens: [{name: a, token: short, scopes: [read]}]}", "auth.tokens.0"),
        (
            "auth: {tokens: [{name: a, token: long-enough-token-1234, scopes: [root]}]}",
            "auth.tokens.0.scopes",
        ),
        ("models: {m: {token_aggregation: median}}", "models.m.token_aggregation"),
        ("recalibration: {schedule: every monday}", "recalibration.schedule"),
        ("recalibration: {schedule: '0 3 * * 8'}", "recalibration.schedule"),
        ("recalibration: {methods: [temperature, magic]}", "recalibration.methods"),
        ("notifications: [{kind: apprise, url: 'nosuch://x'}]", "notifications.0"),
        ("drift: {policy: bayes}", "drift.policy"),
        ("drift: {tolerance: 0}", "drift.tolerance"),
        ("drift: {false_alarm_every: ten years}", "drift.false_alarm_every"),
        ("drift: {false_alarm_every: 0}", "drift.false_alarm_every"),
        ("drift: {baseline_start: 100}", "drift"),
        ("drift: {baseline_start: 200, baseline_end: 100}", "drift"),
        ("models: {m: {segments: {s: {drift: {tolerance: 0.05}}}}}", "models.m.segments.s.drift"),
        ("root_path: calmon/", "root_path"),
        ("retention: {batch_rows: 100000}", "retention.batch_rows"),
        ("root_path: '/a/<b>'", "root_path"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value)


def test_false_alarm_every_as_a_count_or_a_duration() -> None:
    from monitor.evaluation.evidence import threshold_of

    settings = load_settings(None, drift={"false_alarm_every": "520w"}, evaluation={"interval_seconds": 60})
    assert threshold_of(settings.drift, 60) == 520 * 7 * 24 * 60  # evaluations in ten years
    assert threshold_of(load_settings(None).drift, 60) == 100_000
    model = load_settings(None, models={"m": {"drift": {"tolerance": 0.05, "false_alarm_every": 1000}}})
    assert (model.drift_for("m", "*").tolerance, model.drift_for("m", "x").false_alarm_every) == (0.05, 1000)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings("/nonexistent/calmon.yaml")


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("24h") == 86400 and parse_duration("7d") == 604800
    with pytest.raises(ValueError):
        parse_duration("7 days")


def test_check_config_masks_secrets(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALMON_TOKEN_APP", "app-token-abcdefghijklmnop")
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(config_file), "check-config"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "s3cret-pass" not in out and "app-token-abcdefghijklmnop" not in out and "XXXX" not in out
    printed = yaml.safe_load(out)
    assert printed["database_url"] == "postgresql+psycopg://calmon:***@db.internal:5432/calmon"
    assert printed["auth"]["tokens"][0]["token"] == "********"
    assert printed["port"] == 9000


def test_cli_rejects_bad_config_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("port: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", str(path), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "port" in result.stderr
