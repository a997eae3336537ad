"""PromQL checks for shipped queries: syntax through the real promtool, metric names by inspection."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from monitor.telemetry import ServiceMetrics

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "exposition.txt"

# Grafana variables, replaced by concrete values so promtool and Prometheus can run the query.
GRAFANA_DEFAULTS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$model": "m",
    "$segment": "s",
    "$window": "1h",
    "$score": "raw",
    "$job": "calmon",
}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "group_left", "group_right"}


def expand(expr: str, values: Mapping[str, str] | None = None) -> str:
    merged = {**GRAFANA_DEFAULTS, **(values or {})}
    for name in sorted(merged, key=len, reverse=True):  # $__rate_interval before $__range, etc.
        expr = expr.replace("${" + name[1:] + "}", merged[name]).replace(name, merged[name])
    assert not re.search(r"\$[A-Za-z_{]", expr), f"unexpanded variable in {expr!r}"  # $1 is a backreference
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a query selects: identifiers that are not functions, keywords, labels or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![0-9a-zA-Z_:.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def exported_names(exposition: str) -> set[str]:
    """Sample names an exposition's families can produce (from its TYPE lines, even when empty)."""
    names = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ", 3)
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def check_with_promtool(
    promtool: str, exprs: Iterable[str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check rules`` on the queries as recording rules (promtool parses each one)."""
    rules = [{"record": f"calmon_check:q{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = workdir / "queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def exporter_names() -> set[str]:
    """Every sample name calmon can export: the snapshot families (golden) and the live registry."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    live = generate_latest(registry).decode()
    return exported_names(GOLDEN.read_text()) | exported_names(live)
