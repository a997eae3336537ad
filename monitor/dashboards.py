"""The Grafana dashboards, built as plain JSON-ready dicts.

Built in code rather than kept by hand so the three dashboards share one set of conventions (the
datasource variable, units, the ``max by`` that merges replicas) and so ``calmon dashboards push``
works from an installed package. ``dashboards/*.json`` is this module's output, checked in for
Grafana's file provisioning; a test fails when the two differ (``calmon dashboards render`` rewrites
them). Queries use only families the exporter exports; followers serve the leader's snapshot, so
window gauges are merged across replicas with ``max by``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CALIBRATED",
    "DATASOURCE",
    "FOLDER_TITLE",
    "FOLDER_UID",
    "JSON_NAME",
    "RAW",
    "SCHEMA_VERSION",
    "SERIES",
    "Json",
    "dashboards",
    "model_detail",
    "overview",
    "queries",
    "render",
    "service_health",
    "target",
]


SCHEMA_VERSION = 39
FOLDER_UID = "calmon"
FOLDER_TITLE = "calmon"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JSON_NAME = {
    "calmon-overview": "calibration-overview.json",
    "calmon-model": "model-detail.json",
    "calmon-service": "service-health.json",
}

Json = dict[str, Any]

# Selectors shared by the model-detail panels.
SERIES = 'model="$model", segment="$segment", window="$window"'
CALIBRATED = f'{SERIES}, score="calibrated"'
RAW = f'{SERIES}, score="raw"'


def target(
    expr: str, legend: str = "", *, instant: bool = False, table: bool = False, heatmap: bool = False
) -> Json:
    """One Prometheus query of a panel; ``refId`` is filled in by :func:`_panel`.

    ``heatmap`` asks Grafana to de-accumulate cumulative ``le`` buckets into cells.
    """
    query: Json = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        query |= {"instant": True, "range": False}
    if table:
        query["format"] = "table"
    if heatmap:
        query["format"] = "heatmap"
    return query


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    *,
    width: int = 12,
    height: int = 8,
    unit: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    options: Json | None = None,
    overrides: list[Json] | None = None,
    custom: Json | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    defaults: Json = {}
    if unit is not None:
        defaults["unit"] = unit
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if thresholds is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in thresholds],
        }
    if custom is not None:
        defaults["custom"] = custom
    for index, query in enumerate(targets):
        query["refId"] = chr(ord("A") + index)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "gridPos": {"w": width, "h": height},
        "transformations": transformations or [],
    }


def _layout(panels: list[Json]) -> list[Json]:
    """Ids and grid positions: left to right, wrapping at Grafana's 24 columns."""
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        width, height = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        panel["id"] = number
        panel["gridPos"] = {"x": x, "y": y, "w": width, "h": height}
        x += width
        row_height = max(row_height, height)
    return panels


def _datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }


def _query_variable(
    name: str, label: str, query: str, *, include_all: bool = False, multi: bool = False
) -> Json:
    variable: Json = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,  # the string form: every Grafana version's Prometheus variable editor reads it
        "refresh": 2,  # on time-range change: new models appear without a reload
        "sort": 1,
        "includeAll": include_all,
        "multi": multi,
        "current": {},
        "hide": 0,
    }
    if include_all:
        variable["allValue"] = ".*"
    return variable


def _dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    panels: list[Json],
    annotations: list[Json] | None = None,
) -> Json:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["calmon"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": [_datasource_variable(), *variables]},
        "annotations": {"list": [builtin, *(annotations or [])]},
        "links": [
            {
                "type": "dashboards",
                "tags": ["calmon"],
                "asDropdown": True,
                "title": "calmon",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": _layout(panels),
    }


def _drift_flags(queries: list[Json], width: int, description: str = "") -> Json:
    return _panel(
        "state-timeline",
        "Drift flags",
        "1 while the drift policy finds drift of that kind for the series (after its "
        "consecutive-evaluations debounce)." + description,
        queries,
        width=width,
        thresholds=[(None, "green"), (1, "red")],
        options={"showValue": "never", "mergeValues": True},
    )


def _window_variable(selector: str) -> Json:
    return _query_variable("window", "Window", f"label_values(calmon_window_predictions{selector}, window)")


def overview() -> Json:
    """Every model at a glance: raw vs calibrated ECE, coverage, drift flags, recalibrations."""
    models = 'model=~"$model"'
    wide = f'{models}, segment="*", window="$window"'
    panels = [
        _panel(
            "timeseries",
            "ECE, raw vs calibrated (model-wide)",
            "Expected calibration error of the raw model confidence and of the calibrated confidence "
            "applications act on. Calibrated well below raw means the calibrator is earning its keep.",
            [
                target(
                    f"max by (model, score) (calmon_expected_calibration_error{{{wide}}})",
                    "{{model}} {{score}}",
                )
            ],
            width=24,
            unit="percentunit",
            minimum=0,
        ),
        _panel(
            "table",
            "Models",
            "Latest window statistics per model (model-wide series).",
            [
                target(
                    f'max by (model) (calmon_expected_calibration_error{{{wide}, score="calibrated"}})',
                    "calibrated ECE",
                    instant=True,
                    table=True,
                ),
                target(
                    f'max by (model) (calmon_expected_calibration_error{{{wide}, score="raw"}})',
                    "raw ECE",
                    instant=True,
                    table=True,
                ),
                target(
                    f'max by (model) (calmon_label_coverage_ratio{{{wide}, score="raw"}})',
                    "label coverage",
                    instant=True,
                    table=True,
                ),
                target(
                    f'max by (model) (calmon_labelled_predictions{{{wide}, score="raw"}})',
                    "labelled",
                    instant=True,
                    table=True,
                ),
            ],
            width=24,
            options={"showHeader": True, "sortBy": [{"displayName": "Value #A", "desc": True}]},
            transformations=[{"id": "merge", "options": {}}],  # one row per model, one column per query
            custom={"align": "auto"},
        ),
        _panel(
            "timeseries",
            "Label coverage",
            "Share of the window's predictions that have ground truth. A falling line means the "
            "labelling pipeline is late or stalled (see the CalmonLabelCoverageFalling runbook).",
            [target(f'max by (model) (calmon_label_coverage_ratio{{{wide}, score="raw"}})', "{{model}}")],
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        _panel(
            "timeseries",
            "Predictions and feedback per second",
            "Ingest rate per model (summed over replicas).",
            [
                target(
                    f"sum by (model) (rate(calmon_predictions_total{{{models}}}[$__rate_interval]))",
                    "{{model}} predictions",
                ),
                target(
                    f"sum by (model) (rate(calmon_feedback_total{{{models}}}[$__rate_interval]))",
                    "{{model}} feedback",
                ),
            ],
            unit="reqps",
            minimum=0,
        ),
        _drift_flags(
            [
                target(
                    f"max by (model, segment, kind) (calmon_drift_detected{{{models}}})",
                    "{{model}}/{{segment}} {{kind}}",
                )
            ],
            width=24,
        ),
        _panel(
            "bargauge",
            "Recalibrations in range",
            "Recalibration runs by outcome over the dashboard's time range, all replicas.",
            [
                target(
                    "sum by (model, segment, outcome) "
                    f"(increase(calmon_recalibrations_total{{{models}}}[$__range]))",
                    "{{model}}/{{segment}} {{outcome}}",
                    instant=True,
                )
            ],
            minimum=0,
            options={"displayMode": "basic", "orientation": "horizontal"},
        ),
        _panel(
            "table",
            "Serving calibrators",
            "The calibrator version and method each model and segment serves now.",
            [
                target(
                    f"max by (model, segment, version, method) (calmon_calibrator_info{{{models}}})",
                    instant=True,
                    table=True,
                )
            ],
        ),
    ]
    return _dashboard(
        "calmon-overview",
        "calmon / Calibration overview",
        "Calibration of every model calmon watches.",
        [
            _query_variable(
                "model",
                "Model",
                "label_values(calmon_window_predictions, model)",
                include_all=True,
                multi=True,
            ),
            _window_variable('{model=~"$model"}'),
        ],
        panels,
    )


def model_detail() -> Json:
    """One model and segment: is its confidence honest, since when not, and what was done about it."""
    band_overrides: list[Json] = [
        {
            "matcher": {"id": "byName", "options": "CI upper"},
            "properties": [
                {"id": "custom.fillBelowTo", "value": "CI lower"},
                {"id": "custom.lineWidth", "value": 0},
                {"id": "custom.fillOpacity", "value": 20},
            ],
        },
        {
            "matcher": {"id": "byName", "options": "CI lower"},
            "properties": [{"id": "custom.lineWidth", "value": 0}],
        },
    ]
    panels = [
        _panel(
            "timeseries",
            "Calibrated ECE with its 95% interval, and raw ECE",
            "Displayed metrics: the drift decision is the detector's (next panel), not this "
            "estimate, which is noisy with few labels and re-tested every evaluation.",
            [
                target(f"max(calmon_expected_calibration_error{{{CALIBRATED}}})", "calibrated ECE"),
                target(f"max(calmon_expected_calibration_error_ci_lower{{{CALIBRATED}}})", "CI lower"),
                target(f"max(calmon_expected_calibration_error_ci_upper{{{CALIBRATED}}})", "CI upper"),
                target(f"max(calmon_expected_calibration_error{{{RAW}}})", "raw ECE"),
            ],
            width=16,
            unit="percentunit",
            minimum=0,
            overrides=band_overrides,
        ),
        _panel(
            "timeseries",
            "Accuracy: estimated (label-free, 95% interval) vs realised",
            "Estimated: the accuracy the served confidences imply, over every prediction of the window, "
            "labelled or not (it moves before the labels arrive); its interval adds the calibrator's "
            "measured bias when significant. Realised: the labelled predictions only. Floor: "
            "drift.accuracy_floor, where set (CalmonEstimatedAccuracyBelowFloor).",
            [
                target(f"max(calmon_estimated_accuracy{{{SERIES}}})", "estimated"),
                target(f"max(calmon_estimated_accuracy_lower{{{SERIES}}})", "CI lower"),
                target(f"max(calmon_estimated_accuracy_upper{{{SERIES}}})", "CI upper"),
                target(f"max(calmon_accuracy_ratio{{{CALIBRATED}}})", "realised (labelled)"),
                target('max(calmon_accuracy_floor{model="$model", segment="$segment"})', "floor"),
            ],
            width=16,
            unit="percentunit",
            minimum=0,
            maximum=1,
            overrides=band_overrides,
        ),
        _panel(
            "timeseries",
            "When to accept: advised threshold and traffic accepted, per target precision",
            "Per advice.targets: the lowest calibrated confidence whose accepted answers reach the target "
            "precision with probability >= 1 - advice.alpha, and the share of the window's traffic it "
            "accepts. A threshold that rises means fewer answers can be trusted without review.",
            [
                target(f"max by (target) (calmon_advised_threshold{{{SERIES}}})", "threshold {{target}}"),
                target(f"max by (target) (calmon_advised_coverage{{{SERIES}}})", "accepted {{target}}"),
            ],
            width=16,
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        _panel(
            "barchart",
            "Risk-coverage: traffic accepted and its precision, per threshold ($window window)",
            "The whole trade-off behind the advice: for each threshold of advice.curve (at the nearest "
            "bin edge), the share of the window's traffic whose calibrated confidence reaches it and the "
            "precision of the labelled ones among them. Raising the threshold buys precision with "
            "coverage; the advised thresholds are points on this curve with a guarantee.",
            [
                target(
                    f"max by (threshold) (calmon_accept_coverage{{{SERIES}}})",
                    "accepted",
                    instant=True,
                    table=True,
                ),
                target(
                    f"max by (threshold) (calmon_accept_precision{{{SERIES}}})",
                    "precision",
                    instant=True,
                    table=True,
                ),
            ],
            width=8,
            unit="percentunit",
            minimum=0,
            maximum=1,
            options={"xField": "threshold", "orientation": "vertical", "legend": {"showLegend": True}},
            transformations=[
                {"id": "joinByField", "options": {"byField": "threshold", "mode": "outer"}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Time 1": True, "Time 2": True},
                        "renameByName": {"Value #A": "accepted", "Value #B": "precision"},
                    },
                },
                {"id": "sortBy", "options": {"sort": [{"field": "threshold"}]}},
            ],
        ),
        _panel(
            "timeseries",
            "Drift evidence against its threshold (log10)",
            "The drift detectors' evidence that calibration error exceeds drift.tolerance, log10: "
            "'calibrated' alarms (CalmonCalibrationDrift, a refit) where it meets the threshold set by "
            "drift.false_alarm_every; 'raw' is reported only; 'paired' is evidence that the served "
            "confidence is worse than raw (with 'calibrated' in alarm: automatic rollback).",
            [
                target(
                    'max by (score) (calmon_drift_evidence_log10{model="$model", segment="$segment"})',
                    "{{score}}",
                ),
                target(
                    "max(calmon_drift_evidence_threshold_log10"
                    '{model="$model", segment="$segment", score="calibrated"})',
                    "threshold",
                ),
            ],
            width=16,
        ),
        _panel(
            "stat",
            "Drift began (estimated change point)",
            "While the detector is in alarm: the prediction time where the evidence run that crossed "
            "began. A drift refit fits only on predictions made after it.",
            [
                target(
                    "max by (score) (calmon_drift_change_point_timestamp_seconds"
                    '{model="$model", segment="$segment"}) * 1000',
                    "{{score}}",
                )
            ],
            width=8,
            unit="dateTimeAsIso",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"},
        ),
        _panel(
            "table",
            "Serving calibrator",
            "Active calibrator version and method for this model (per segment; '*' is model-wide).",
            [
                target(
                    'max by (segment, version, method) (calmon_calibrator_info{model="$model"})',
                    instant=True,
                    table=True,
                )
            ],
            width=8,
        ),
        _panel(
            "barchart",
            "Reliability diagram (accuracy per confidence bin)",
            "Observed accuracy in each equal-width confidence bin of the window. A calibrated score "
            "has bin i's accuracy near its bin's centre, (i + 0.5) / bins.",
            [
                target(
                    # zero-pad single-digit bins ("7" -> "07") so the string bins sort in order
                    "label_replace(max by (bin, score) "
                    f'(calmon_reliability_bin_accuracy_ratio{{{SERIES}, score=~"$score"}}), '
                    '"bin", "0$1", "bin", "([0-9])")',
                    "{{score}}",
                    instant=True,
                    table=True,
                )
            ],
            unit="percentunit",
            minimum=0,
            maximum=1,
            options={"orientation": "vertical", "groupWidth": 0.8},
            # one row per bin, one bar per score
            transformations=[
                {"id": "sortBy", "options": {"sort": [{"field": "bin"}]}},
                {
                    "id": "groupingToMatrix",
                    "options": {"columnField": "score", "rowField": "bin", "valueField": "Value"},
                },
            ],
        ),
        _panel(
            "heatmap",
            "Confidence distribution over time (raw)",
            "Where the model's raw confidences fall, window by window. A moving mass is a "
            "distribution shift (see PSI), visible before any label arrives.",
            [target(f"max by (le) (calmon_window_confidence_bucket{{{RAW}}})", "{{le}}", heatmap=True)],
            options={
                "calculate": False,
                "yAxis": {"unit": "percentunit"},
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges"},
            },
        ),
        _panel(
            "timeseries",
            "Accuracy vs mean confidence",
            "A calibrated model's two lines coincide; confidence above accuracy is overconfidence.",
            [
                target(f'max by (score) (calmon_accuracy_ratio{{{SERIES}, score="raw"}})', "accuracy"),
                target(
                    f'max by (score) (calmon_mean_confidence{{{SERIES}, score=~"$score"}})',
                    "{{score}} confidence",
                ),
            ],
            width=8,
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        _panel(
            "timeseries",
            "Confidence shift (PSI vs previous period)",
            "Population stability index of the confidence distribution. Above 0.25 is a large shift "
            "(CalmonConfidenceShift).",
            [target(f'max by (score) (calmon_confidence_psi{{{SERIES}, score=~"$score"}})', "{{score}}")],
            width=8,
            minimum=0,
            thresholds=[(None, "green"), (0.1, "yellow"), (0.25, "red")],
            custom={"thresholdsStyle": {"mode": "line"}},
        ),
        _panel(
            "timeseries",
            "Spiegelhalter Z",
            "Standardised calibration test statistic; |Z| > 1.96 rejects calibration at 5%.",
            [
                target(
                    f'max by (score) (calmon_calibration_z_score{{{SERIES}, score=~"$score"}})', "{{score}}"
                )
            ],
            width=8,
            thresholds=[(None, "green"), (1.96, "red")],
            custom={"thresholdsStyle": {"mode": "line"}},
        ),
        _panel(
            "timeseries",
            "Labelled predictions and coverage",
            "How much ground truth the window's numbers rest on.",
            [
                target(f"max(calmon_labelled_predictions{{{RAW}}})", "labelled"),
                target(f"max(calmon_window_predictions{{{RAW}}})", "predictions"),
            ],
            width=8,
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Brier score and MCE",
            "Brier (lower is better, mixes calibration and sharpness) and the worst bin's gap.",
            [
                target(
                    f'max by (score) (calmon_brier_score{{{SERIES}, score=~"$score"}})', "{{score}} Brier"
                ),
                target(
                    f'max by (score) (calmon_maximum_calibration_error{{{SERIES}, score=~"$score"}})',
                    "{{score}} MCE",
                ),
            ],
            width=8,
            minimum=0,
        ),
        _drift_flags(
            [
                target(
                    'max by (segment, kind) (calmon_drift_detected{model="$model"})', "{{segment}} {{kind}}"
                ),
                target(
                    'max by (segment, window) (calmon_window_calibrator_changed{model="$model"})',
                    "{{segment}} {{window}}: calibrator changed",
                ),
            ],
            width=8,
            description=" 'calibrator changed': the window still holds the previous calibrator's "
            "confidences, so its calibrated score is not judged.",
        ),
        _panel(
            "timeseries",
            "ECE over the dashboard range from the binned counters",
            "Computed by PromQL alone from the mergeable per-bin counters over the whole time "
            "range, across replicas (by label arrival time; the window gauges go by prediction time).",
            [
                target(
                    "sum by (score) (abs("
                    'sum by (score, bin) (increase(calmon_binned_correct_total{model="$model"}[$__range]))'
                    " - "
                    "sum by (score, bin) "
                    '(increase(calmon_binned_confidence_sum_total{model="$model"}[$__range]))'
                    ")) / "
                    'sum by (score) (increase(calmon_binned_predictions_total{model="$model"}[$__range]))',
                    "{{score}}",
                    instant=True,
                )
            ],
            width=24,
            height=6,
            unit="percentunit",
            minimum=0,
        ),
    ]
    annotations = [
        {
            "name": "Recalibrations",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "blue",
            "expr": "sum by (segment, outcome) "
            '(increase(calmon_recalibrations_total{model="$model"}[2m])) > 0',
            "step": "60s",
            "titleFormat": "recalibration {{outcome}}",
            "textFormat": "segment {{segment}}",
            "useValueForTime": False,
        },
        {
            "name": "Drift",
            "datasource": DATASOURCE,
            "enable": True,
            "iconColor": "red",
            "expr": 'max by (segment, kind) (calmon_drift_detected{model="$model"}) > 0',
            "step": "60s",
            "titleFormat": "drift: {{kind}}",
            "textFormat": "segment {{segment}}",
            "useValueForTime": False,
        },
    ]
    return _dashboard(
        "calmon-model",
        "calmon / Model detail",
        "One model and segment: calibration over time, reliability, confidence distribution, drift "
        "and the calibrator serving it. Segment '*' is the model-wide series.",
        [
            _query_variable("model", "Model", "label_values(calmon_window_predictions, model)"),
            _query_variable(
                "segment", "Segment", 'label_values(calmon_window_predictions{model="$model"}, segment)'
            ),
            _window_variable('{model="$model"}'),
            _query_variable(
                "score",
                "Score",
                'label_values(calmon_window_predictions{model="$model"}, score)',
                include_all=True,
                multi=True,
            ),
        ],
        panels,
        annotations,
    )


def service_health() -> Json:
    """The daemon itself: ingest, rejects, latency, jobs, leadership, scrape health."""
    job = 'job=~"$job"'
    panels = [
        _panel(
            "stat",
            "Replicas up",
            "Scraped calmon replicas that answered.",
            [target(f"sum(up{{{job}}})", "up", instant=True)],
            width=6,
            height=4,
            thresholds=[(None, "red"), (1, "green")],
        ),
        _panel(
            "stat",
            "Scheduler leaders",
            "Replicas holding the scheduler lease: exactly 1 is healthy.",
            [target(f"sum(calmon_scheduler_leader{{{job}}})", "leaders", instant=True)],
            width=6,
            height=4,
            thresholds=[(None, "red"), (1, "green"), (2, "red")],
        ),
        _panel(
            "stat",
            "Seconds since last evaluation",
            "Age of the newest snapshot any replica serves (CalmonEvaluationStale).",
            [
                target(
                    f"time() - max(calmon_last_evaluation_timestamp_seconds{{{job}}})",
                    "age",
                    instant=True,
                )
            ],
            width=6,
            height=4,
            unit="s",
            thresholds=[(None, "green"), (300, "yellow"), (600, "red")],
        ),
        _panel(
            "stat",
            "Rejected records per second",
            "Records refused at ingest, all reasons.",
            [
                target(
                    f"sum(rate(calmon_rejected_records_total{{{job}}}[$__rate_interval])) or vector(0)",
                    "rejected",
                )
            ],
            width=6,
            height=4,
            unit="reqps",
            thresholds=[(None, "green"), (1, "yellow")],
        ),
        _panel(
            "timeseries",
            "Predictions per second by model",
            "Accepted predictions, all replicas.",
            [
                target(
                    f"sum by (model) (rate(calmon_predictions_total{{{job}}}[$__rate_interval]))",
                    "{{model}}",
                )
            ],
            unit="reqps",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Feedback per second by outcome",
            "matched = labelled a known prediction; pending = waiting for its prediction; duplicate "
            "and conflict per the first-label-wins rule.",
            [
                target(
                    f"sum by (outcome) (rate(calmon_feedback_total{{{job}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            unit="reqps",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Rejected records by reason",
            "The field at fault of each rejected record.",
            [
                target(
                    f"sum by (reason) (rate(calmon_rejected_records_total{{{job}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            unit="reqps",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Request latency p50 / p99 by route",
            "From the request-duration histogram, all replicas.",
            [
                target(
                    "histogram_quantile(0.5, sum by (le, route) "
                    f"(rate(calmon_http_request_duration_seconds_bucket{{{job}}}[$__rate_interval])))",
                    "p50 {{route}}",
                ),
                target(
                    "histogram_quantile(0.99, sum by (le, route) "
                    f"(rate(calmon_http_request_duration_seconds_bucket{{{job}}}[$__rate_interval])))",
                    "p99 {{route}}",
                ),
            ],
            unit="s",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Job duration p95",
            "Scheduler jobs; evaluate should stay well below its interval.",
            [
                target(
                    "histogram_quantile(0.95, sum by (le, task) "
                    f"(rate(calmon_job_duration_seconds_bucket{{{job}}}[$__rate_interval])))",
                    "{{task}}",
                )
            ],
            unit="s",
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Job runs by outcome",
            "Failures are logged and retried at the next tick (CalmonJobFailing).",
            [
                target(
                    f"sum by (task, outcome) (increase(calmon_job_runs_total{{{job}}}[$__rate_interval]))",
                    "{{task}} {{outcome}}",
                )
            ],
            minimum=0,
        ),
        _panel(
            "timeseries",
            "Leader by replica",
            "Which replica holds the scheduler lease over time.",
            [target(f"max by (instance) (calmon_scheduler_leader{{{job}}})", "{{instance}}")],
            minimum=0,
            maximum=1,
        ),
        _panel(
            "timeseries",
            "Notifications by outcome",
            "Event deliveries to webhook, Slack and e-mail receivers.",
            [
                target(
                    "sum by (kind, outcome) "
                    f"(increase(calmon_notifications_total{{{job}}}[$__rate_interval]))",
                    "{{kind}} {{outcome}}",
                )
            ],
            minimum=0,
        ),
    ]
    return _dashboard(
        "calmon-service",
        "calmon / Service health",
        "The calmon daemons: ingest, rejects, latency, scheduler jobs, leadership.",
        [
            _query_variable(
                "job", "Job", "label_values(calmon_scheduler_leader, job)", include_all=True, multi=True
            )
        ],
        panels,
    )


def dashboards() -> dict[str, Json]:
    """uid -> dashboard."""
    return {d["uid"]: d for d in (overview(), model_detail(), service_health())}


def queries(dashboard: Json) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and variable query of a dashboard."""
    for panel in dashboard["panels"]:
        for query in panel["targets"]:
            yield f"panel {panel['title']!r} {query['refId']}", query["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            definition = variable["definition"]
            inner = definition.removeprefix("label_values(").rsplit(",", 1)[0]
            yield f"variable {variable['name']!r}", inner


def render(directory: Path) -> list[Path]:
    """Write every dashboard as ``<name>.json`` (the provisioned copies in ``dashboards/``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, dashboard in dashboards().items():
        path = directory / JSON_NAME[uid]
        path.write_text(json.dumps(dashboard, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
