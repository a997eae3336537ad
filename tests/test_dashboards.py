"""The Grafana dashboards: files equal the builder, every query parses (promtool), uses exported names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from monitor import dashboards as builder
from tests.support.promql import check_with_promtool, expand, exporter_names, metric_names
from tests.support.services import promtool

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
GOLDEN = Path(__file__).with_name("golden") / "exposition.txt"


def all_queries() -> list[tuple[str, str, str]]:
    return [
        (uid, where, expr)
        for uid, dashboard in builder.dashboards().items()
        for where, expr in builder.queries(dashboard)
    ]


def test_checked_in_json_is_the_builder_output(tmp_path: Path) -> None:
    written = builder.render(tmp_path)
    assert {p.name for p in written} == {p.name for p in DASHBOARDS.glob("*.json")}
    for path in written:
        assert json.loads((DASHBOARDS / path.name).read_text()) == json.loads(path.read_text()), (
            f"dashboards/{path.name} is stale: run `calmon dashboards render`"
        )


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    queries = all_queries()
    assert len(queries) > 40
    result = check_with_promtool(promtool(), [expand(expr) for _, _, expr in queries], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    result = check_with_promtool(promtool(), ["sum by (model) (rate(calmon_predictions_total[5m])"], tmp_path)
    assert result.returncode != 0
    assert "q0" in result.stdout + result.stderr or "parse error" in (result.stdout + result.stderr)


def test_every_query_uses_only_exported_metric_names() -> None:
    exported = exporter_names() | {"up"}
    for uid, where, expr in all_queries():
        names = metric_names(expand(expr))
        assert names, f"{uid} {where} selects no metric: {expr}"
        assert names <= exported, f"{uid} {where} uses {sorted(names - exported)}, not exported"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (model, le) (rate(calmon_x_bucket{a="b", c=~"d.*"}[5m])) / on (model) calmon_y offset 1h',
            {"calmon_x_bucket", "calmon_y"},
        ),
        (
            "time() - max(calmon_last_evaluation_timestamp_seconds) > 600 or vector(0)",
            {"calmon_last_evaluation_timestamp_seconds"},
        ),
        ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{route="/v1/x"}[1m])))', {"h_bucket"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_exporter_names_include_live_and_snapshot_families() -> None:
    names = exporter_names()
    assert {
        "calmon_predictions_total",
        "calmon_feedback_total",
        "calmon_job_duration_seconds_bucket",
    } <= names
    assert {"calmon_expected_calibration_error_ci_lower", "calmon_window_confidence_bucket"} <= names
    assert {"calmon_drift_detected", "calmon_calibrator_info", "calmon_binned_correct_total"} <= names
    assert "calmon_not_a_metric" not in names


def test_dashboards_cover_what_the_on_call_engineer_needs() -> None:
    dashboards = builder.dashboards()
    assert set(dashboards) == {"calmon-overview", "calmon-model", "calmon-service"}
    for dashboard in dashboards.values():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and panel["description"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        variables = [v["name"] for v in dashboard["templating"]["list"]]
        assert variables[0] == "datasource"
    detail = dashboards["calmon-model"]
    assert [v["name"] for v in detail["templating"]["list"]][1:4] == ["model", "segment", "window"]
    kinds = {panel["type"] for panel in detail["panels"]}
    (heatmap,) = [panel for panel in detail["panels"] if panel["type"] == "heatmap"]
    assert heatmap["targets"][0]["format"] == "heatmap"  # cumulative le buckets become cells
    assert heatmap["targets"][0]["legendFormat"] == "{{le}}"
    assert {"heatmap", "barchart", "timeseries", "table", "state-timeline"} <= kinds
    exprs = " ".join(expr for _, expr in builder.queries(detail))
    for family in (
        "calmon_expected_calibration_error_ci_lower",
        "calmon_reliability_bin_accuracy_ratio",
        "calmon_window_confidence_bucket",
        "calmon_confidence_psi",
        "calmon_calibration_z_score",
        "calmon_accuracy_ratio",
        "calmon_mean_confidence",
        "calmon_calibrator_info",
        "calmon_advised_threshold",
        "calmon_accept_coverage",
        "calmon_accept_precision",
    ):
        assert family in exprs
    (curve,) = [panel for panel in detail["panels"] if panel["title"].startswith("Risk-coverage")]
    assert curve["type"] == "barchart" and curve["options"]["xField"] == "threshold"
    assert all(t["instant"] and t["format"] == "table" for t in curve["targets"])  # one row per threshold
    assert curve["transformations"][0] == {
        "id": "joinByField",
        "options": {"byField": "threshold", "mode": "outer"},
    }
    annotations = {a["name"]: a for a in detail["annotations"]["list"]}
    assert "calmon_recalibrations_total" in annotations["Recalibrations"]["expr"]
    overview = " ".join(expr for _, expr in builder.queries(dashboards["calmon-overview"]))
    for family in ("calmon_label_coverage_ratio", "calmon_drift_detected", "calmon_recalibrations_total"):
        assert family in overview
    assert 'score="raw"' in overview or "score)" in overview
    service = " ".join(expr for _, expr in builder.queries(dashboards["calmon-service"]))
    for family in (
        "calmon_predictions_total",
        "calmon_feedback_total",
        "calmon_rejected_records_total",
        "calmon_http_request_duration_seconds_bucket",
        "calmon_job_duration_seconds_bucket",
        "calmon_job_runs_total",
        "calmon_scheduler_leader",
    ):
        assert family in service


def test_provisioning_files_point_at_the_dashboards() -> None:
    datasources = yaml.safe_load((DASHBOARDS / "provisioning/datasources/calmon.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    providers = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/calmon.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == builder.FOLDER_UID
    assert provider["options"]["path"].startswith("/")
