"""The command line: ``--config`` before or after the verb, help texts with defaults, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from monitor.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "calmon.yaml"
    path.write_text("port: 9123\nevaluation: {windows: [2h]}\nlogging: {format: text}\n")
    return path


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_works_before_and_after_the_verb(
    where: str, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = (
        ["--config", str(config), "check-config"]
        if where == "before"
        else ["check-config", "--config", str(config)]
    )
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["port"] == 9123 and printed["evaluation"]["windows"] == ["2h"]


def test_database_url_after_the_verb_overrides_the_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["check-config", "--config", str(config), "--database-url", url]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["database_url"] == url


def test_a_missing_config_file_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verb", "expected"),
    [
        (["serve"], ["--config", "--database-url", "--host", "--port", "default: the config's port, 8000"]),
        (["recalibrate"], ["--segment", "(default: *)", "--dry-run"]),
        (["dashboards"], ["(default: dashboards)", "(default: GRAFANA_TOKEN)", "(default: calmon)"]),
        (["rebuild-aggregates"], ["--all", "--database-url"]),
    ],
)
def test_every_verb_documents_its_options_and_defaults(
    verb: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*verb, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for fragment in expected:
        assert fragment in text, fragment
    assert "(default: None)" not in text and "(default: False)" not in text


def test_an_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_driver_error_from_a_command_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Commands that work through the driver's own cursor (``calmon import``) meet its errors
    unwrapped by SQLAlchemy: the same one line as an unreachable database, not a traceback."""
    import psycopg

    from monitor import cli

    def cancelled(args: object, settings: object) -> int:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    monkeypatch.setattr(cli, "_import", cancelled)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["import", "--input", str(tmp_path / "h.parquet"), "--database-url", url]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the database" in lines[0], lines
    assert "statement timeout" in lines[0]
