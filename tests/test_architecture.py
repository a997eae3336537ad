"""The shape docs/architecture.md promises, checked on the source: layering, SQL only in store/, short
functions. Each check also proves it can fail, on a snippet that breaks its rule."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "monitor"
MAX_FUNCTION_LINES = 80
# Statement builders: outside monitor/store/ code may hold an Engine or a Connection, never build SQL.
STATEMENT_BUILDERS = {
    "select",
    "insert",
    "update",
    "delete",
    "text",
    "func",
    "and_",
    "or_",
    "case",
    "literal",
}
# What each part may import (besides itself), as docs/architecture.md states it.
ALLOWED: dict[str, set[str]] = {
    "calibration": set(),
    "vocabulary": {"calibration"},
    "config": {"vocabulary"},
    "telemetry": {"calibration", "vocabulary"},
    "store": {"calibration", "config", "vocabulary"},
    "evaluation": {"calibration", "config", "store", "vocabulary"},
    "recalibration": {"calibration", "charts", "config", "store", "telemetry", "vocabulary"},
    "charts": set(),
    "collector": {
        "__init__",
        "calibration",
        "config",
        "evaluation",
        "recalibration",
        "store",
        "telemetry",
        "vocabulary",
    },
    "web": {
        "calibration",
        "charts",
        "collector",
        "config",
        "evaluation",
        "recalibration",
        "store",
        "vocabulary",
    },
    "lease": {"store"},
    "exporter": {"evaluation", "telemetry", "textformat", "vocabulary"},
    "textformat": set(),
    "notify": {"config", "telemetry"},
    "scheduler": {"config", "evaluation", "lease", "recalibration", "store", "telemetry", "vocabulary"},
    "dashboards": set(),
    "grafana": {"dashboards"},
    "logsetup": set(),
    "alerting": set(),
    "replay": {"app", "collector", "config", "evaluation", "recalibration", "store"},
    "bulk": {"calibration", "collector", "config", "store"},
    "spark": {"calibration", "config", "vocabulary"},  # runs on executors: never the store or the API
    "demo": {"config"},  # talks to the daemon over HTTP only, through the client package
}
WIRING = {"app", "cli", "__main__", "__init__"}  # may import anything (only __main__ imports cli)


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" not in path.parts:
            yield path, ast.parse(path.read_text(), str(path))


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("").parts
    return relative[0]


def imported_parts(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "monitor":
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "monitor"]
        for name in names:
            parts = name.split(".")
            found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def statement_builders(tree: ast.AST) -> list[str]:
    """SQLAlchemy statement constructors this module imports or reaches as ``sqlalchemy.X``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sqlalchemy":
            found += [a.name for a in node.names if a.name in STATEMENT_BUILDERS]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("sqlalchemy", "sa")
            and node.attr in STATEMENT_BUILDERS
        ):
            found.append(node.attr)
    return found


def test_no_function_is_longer_than_80_lines_outside_the_dashboard_definitions() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}:{name}": lines
        for path, tree in sources()
        if path.name != "dashboards.py"
        for name, lines in long_functions(tree)
    }
    assert offenders == {}


def test_sql_statements_are_built_only_in_store() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path, tree in sources()
        if part_of(path) != "store" and (found := statement_builders(tree))
    }
    assert offenders == {}


def test_imports_follow_the_stated_layering() -> None:
    offenders = {}
    for path, tree in sources():
        part = part_of(path)
        imported = imported_parts(tree) - {part}
        if "cli" in imported and part != "__main__":
            offenders[str(path.relative_to(ROOT))] = "imports cli"
        elif part not in WIRING:
            assert part in ALLOWED, f"{part}: a new part of monitor/ needs its place in ALLOWED and the docs"
            if imported - ALLOWED[part]:
                offenders[str(path.relative_to(ROOT))] = sorted(imported - ALLOWED[part])
    assert offenders == {}


def test_the_layering_table_is_the_one_in_the_architecture_document() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for part, allowed in ALLOWED.items():
        line = next((x for x in text.splitlines() if x.startswith(f"| `{part}`")), None)
        assert line is not None, f"docs/architecture.md has no layering row for {part}"
        cells = [c.strip() for c in line.split("|")]
        stated = {x.strip(" `") for x in cells[3].split(",") if x.strip(" `—-")}
        assert stated == allowed, (part, stated, allowed)


@pytest.mark.parametrize(
    ("snippet", "check"),
    [
        ("def f():\n" + "    x = 1\n" * 85, lambda t: long_functions(t)),
        ("from sqlalchemy import select\n", statement_builders),
        ("import sqlalchemy\nq = sqlalchemy.text('SELECT 1')\n", statement_builders),
        ("from monitor.store.engine import ping\n", lambda t: imported_parts(t) - ALLOWED["calibration"]),
    ],
)
def test_each_check_catches_what_it_forbids(snippet: str, check: object) -> None:
    assert callable(check)
    assert check(ast.parse(snippet))
