"""The shipped alert rules and Alertmanager example: promtool/amtool clean, unit-tested, documented."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.promql import exporter_names, metric_names
from tests.support.services import promtool, require_binary

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "calmon.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "docs/runbooks/"  # a path in this repository: something that exists


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def amtool() -> str:
    return require_binary("amtool", "prometheus-alertmanager")


def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit-test run above means something: an expectation the rules don't meet fails it."""
    broken = yaml.safe_load(RULE_TESTS[0].read_text())
    broken["rule_files"] = [str(RULES)]
    first = broken["tests"][0]["alert_rule_test"][-1]
    first["exp_alerts"] = []  # claim the firing alert does not fire
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    seen: dict[str, set[str]] = {}
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                state = "firing" if check.get("exp_alerts") else "quiet"
                seen.setdefault(check["alertname"], set()).add(state)
    for rule in alerts():
        assert seen.get(rule["alert"]) == {"firing", "quiet"}, f"{rule['alert']}: {seen.get(rule['alert'])}"


def test_every_alert_has_for_severity_text_and_a_runbook() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for family in (
        "CalmonCalibrationDrift",
        "CalmonRawConfidenceDrift",
        "CalmonConfidenceShift",
        "CalmonFeedbackStalled",
        "CalmonRecalibrationFailing",
        "CalmonRecalibrationRejectedRepeatedly",
        "CalmonEvaluationStale",
        "CalmonDown",
    ):
        assert family in names
    for rule in alerts():
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{name}.md", name
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.exists(), f"missing runbook {runbook}"
        text = runbook.read_text()
        assert text.startswith(f"# {name}"), runbook
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, f"{runbook}: no {section}"


def test_alerts_use_only_exported_metric_names() -> None:
    exported = exporter_names() | {"up"}
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names and names <= exported, f"{rule['alert']}: {sorted(names - exported)}"


def test_calibration_alert_is_the_detectors_alarm_on_the_served_score() -> None:
    """The sequential decision (and its false-alarm guarantee) is calmon's; the rule must not
    re-test a fixed-sample statistic on every evaluation, which is what made it fire on healthy
    traffic (issue 12)."""
    (rule,) = [r for r in alerts() if r["alert"] == "CalmonCalibrationDrift"]
    assert 'calmon_drift_alarm{score="calibrated"}' in rule["expr"]
    assert "calmon_expected_calibration_error" not in rule["expr"]


def test_alertmanager_example_is_valid_and_routes_to_all_three_kinds() -> None:
    path = ROOT / "alerts" / "alertmanager.yml"
    result = subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    kinds = {key for receiver in config["receivers"] for key in receiver if key.endswith("_configs")}
    assert kinds == {"webhook_configs", "slack_configs", "email_configs"}
    routed = {route["receiver"] for route in config["route"]["routes"]} | {config["route"]["receiver"]}
    assert routed == {receiver["name"] for receiver in config["receivers"]}


def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "am.yml"
    path.write_text("route: {receiver: nowhere}\nreceivers: [{name: somewhere}]\n")
    result = subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def test_every_runbook_belongs_to_an_alert() -> None:
    runbooks = {path.stem for path in RUNBOOKS.glob("*.md")}
    assert runbooks == {rule["alert"] for rule in alerts()}


def test_runbook_links_point_at_files_in_this_repository_and_can_be_rebased(
    tmp_path: Path, capsys: Any
) -> None:
    from monitor.cli import main

    for rule in alerts():
        assert (ROOT / rule["annotations"]["runbook_url"]).is_file(), rule["alert"]
    out = tmp_path / "rules.yml"
    args = ["alerts", "render", "--runbook-base", "https://wiki.internal/runbooks", "--rules", str(RULES)]
    assert main([*args, "--out", str(out)]) == 0
    rebased = yaml.safe_load(out.read_text())
    urls = [r["annotations"]["runbook_url"] for g in rebased["groups"] for r in g["rules"] if "alert" in r]
    assert urls == [f"https://wiki.internal/runbooks/{r['alert']}.md" for r in alerts()]
    assert out.read_text().replace("https://wiki.internal/runbooks/", RUNBOOK_BASE) == RULES.read_text()
    result = subprocess.run([promtool(), "check", "rules", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main(["alerts", "render", "--runbook-base", "x", "--rules", str(tmp_path / "none.yml")]) == 2
