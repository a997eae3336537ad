"""``calmon import`` holds to the API: the same history sent over HTTP and imported from Parquet, CSV
and JSON Lines leaves the same stored rows, the same rejections (row = index + 1, field, message)
and, once folded, the same sketch buckets; on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, text

from monitor.bulk.importer import import_history
from monitor.config import Settings, load_settings
from monitor.store.aggregates import aggregate_pending
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from tests.conftest import MakeClient

STORED = (
    "model, prediction_id, segment, ts, input_kind, raw_confidence, predicted, vector, "
    "calibrated_confidence, calibrator_version, correct, label"
)
PROBS_OFF = [0.5, 0.6]  # sums to 1.1: beyond probs_sum_tolerance


def history(now: float) -> list[dict[str, Any]]:
    """Predictions a client might send: valid ones in every form, and one of each kind of defect.
    ``None`` means the field is not given (a null cell)."""
    good = [
        {
            "model": "clf",
            "id": f"p{i}",
            "segment": f"s{i % 3}",
            "ts": now - 3600 - i,
            "confidence": 0.5 + i / 100,
        }
        for i in range(40)
    ]
    odd = [
        {"model": "clf", "id": "unicode-name", "segment": "café", "ts": now - 50, "confidence": 0.7},
        {"model": "模型", "id": "x1", "ts": now - 50, "confidence": 0.9},
        {"model": "clf", "id": "int-pred", "ts": now - 50, "confidence": 0.8, "predicted": 7},
        {"model": "clf", "id": "str-pred", "ts": now - 50, "confidence": 0.8, "predicted": "cat"},
        {"model": "clf", "id": "probs", "ts": now - 50, "probs": [0.2, 0.8]},
        {"model": "clf", "id": "logits", "ts": now - 50, "logits": [1.0, -2.0, 0.5]},
        {"model": "llm", "id": "tok", "ts": now - 50, "token_logprobs": [-0.1, -0.3]},
        {"model": "clf", "id": "p3", "ts": now - 40, "confidence": 0.1},  # repeats p3: a duplicate
        {"model": "clf", "id": "int-conf", "ts": now - 50, "confidence": 1},
        {"model": "clf", "id": "edge-ts", "ts": 0.0 + now - 29 * 86400, "confidence": 0.0},
    ]
    bad = [
        {"model": "", "id": "empty-model", "ts": now - 50, "confidence": 0.5},
        {"model": "   ", "id": "blank-model", "ts": now - 50, "confidence": 0.5},
        {"model": "\u3000", "id": "ideographic-space", "ts": now - 50, "confidence": 0.5},
        {"model": "clf", "id": "ctl\x01", "ts": now - 50, "confidence": 0.5},
        {"model": "clf", "id": "x" * 257, "ts": now - 50, "confidence": 0.5},
        {"model": "clf", "id": "reserved", "segment": "*", "ts": now - 50, "confidence": 0.5},
        {"model": "clf", "id": "over", "ts": now - 50, "confidence": 1.5},
        {"model": "clf", "id": "nan", "ts": now - 50, "confidence": math.nan},
        {"model": "clf", "id": "neg", "ts": now - 50, "confidence": -0.01},
        {"model": "clf", "id": "future", "ts": now + 2 * 86400, "confidence": 0.5},
        {"model": "clf", "id": "old", "ts": now - 400 * 86400, "confidence": 0.5},
        {"model": "clf", "id": "none-given", "ts": now - 50},
        {"model": "clf", "id": "two-forms", "ts": now - 50, "confidence": 0.5, "probs": [0.5, 0.5]},
        {"model": "clf", "id": "probs-sum", "ts": now - 50, "probs": PROBS_OFF},
        {"model": "clf", "id": "long-pred", "ts": now - 50, "confidence": 0.5, "predicted": "y" * 300},
        {"model": "clf", "id": "ctl-pred", "ts": now - 50, "confidence": 0.5, "predicted": "a\nb"},
    ]
    rows = good + odd + bad
    rows.insert(5, rows.pop(-3))  # defects among the valid rows, not only at the end
    return rows


# What only an import refuses: the API defaults a missing time to now, and has no labelled_at.
IMPORT_ONLY = [{"model": "clf", "id": "no-ts", "confidence": 0.5}]


def labels_of(now: float) -> list[dict[str, Any]]:
    return [
        *(
            {"model": "clf", "id": f"p{i}", "correct": i % 3 != 0, "labelled_at": now - 1000 + i}
            for i in range(30)
        ),
        {"model": "clf", "id": "str-pred", "label": "cat", "labelled_at": now - 10},
        {"model": "clf", "id": "int-pred", "label": 8, "labelled_at": now - 10},
        {"model": "clf", "id": "p0", "correct": True, "labelled_at": now - 5},  # p0 is False: a conflict
        {"model": "clf", "id": "p2", "correct": True, "labelled_at": now - 5},  # the same again: duplicate
        {"model": "clf", "id": "later", "correct": True, "labelled_at": now - 5},  # no prediction: parked
        {"model": "clf", "id": "p31", "correct": True, "label": "x", "labelled_at": now - 5},  # both
        {"model": "clf", "id": "p32", "labelled_at": now - 5},  # neither
        {"model": "", "id": "p35", "correct": True, "labelled_at": now - 5},
    ]


def labels_only_import_refuses(now: float) -> list[dict[str, Any]]:
    return [
        {"model": "clf", "id": "p33", "correct": True},  # no labelled_at
        {"model": "clf", "id": "p34", "correct": True, "labelled_at": now + 86400},  # in the future
    ]


# ------------------------------------------------------------------------------------------- writers
def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    import json  # writes NaN as Python clients do; orjson would write null

    path.write_text("".join(json.dumps(_given(r)) + "\n" for r in records))
    return path


def _given(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


def write_parquet(records: list[dict[str, Any]], path: Path, schema: pa.Schema) -> Path:
    columns = {f.name: [r.get(f.name) for r in records] for f in schema}
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


PREDICTION_SCHEMA = pa.schema(
    [("model", pa.string()), ("id", pa.string()), ("segment", pa.string()), ("ts", pa.float64()),
     ("confidence", pa.float64()), ("probs", pa.list_(pa.float64())), ("logits", pa.list_(pa.float64())),
     ("token_logprobs", pa.list_(pa.float64())), ("predicted", pa.string())]
)  # fmt: skip
LABEL_SCHEMA = pa.schema(
    [("model", pa.string()), ("id", pa.string()), ("correct", pa.bool_()), ("label", pa.string()),
     ("labelled_at", pa.float64())]
)  # fmt: skip


def for_parquet(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Parquet column has one type: integer labels are written as text (what the API stores too)."""
    out = []
    for r in records:
        r = dict(r)
        for name in ("predicted", "label"):
            if isinstance(r.get(name), int):
                r[name] = str(r[name])
        out.append(r)
    return out


def write_csv(records: list[dict[str, Any]], path: Path, fields: list[str]) -> Path:
    """An empty cell is a field not given; a text is quoted, so an empty text is ``""``."""
    lines = [",".join(fields)]
    lines += [",".join(_cell(r.get(name)) for name in fields) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = orjson.dumps(value).decode()
    elif isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def other_url(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second, empty database on the same backend as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'imported.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = server.new_database()
    yield url
    server.drop(url)


def stored_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(text(f"SELECT {STORED} FROM predictions ORDER BY model, prediction_id"))  # noqa: S608
        ]


def bucket_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM sketch_bins")).mappings().all()
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in ("id", "updated_at"))) for r in rows)


def fold(engine: Engine, settings: Settings) -> None:
    cfg = settings.evaluation
    while True:
        with engine.begin() as conn:
            if not aggregate_pending(
                conn, cfg.bucket_seconds, cfg.fine_bins, 50_000, settings.max_segments_for
            ).rows:
                return


def rejections_file(path: Path) -> list[tuple[str, int, str | None, str, str]]:
    if not path.exists():
        return []
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [(r["file"], r["row"], r["id"], r["field"], r["error"]) for r in lines]


def over_http(
    client: Any, records: list[dict[str, Any]], route: str, key: str
) -> list[tuple[int, str | None, str, str]]:
    """The records in one request, NaN written as Python's json module writes it (the API reads it)."""
    import json

    sent = [{k: v for k, v in _given(r).items() if k != "labelled_at"} for r in records]  # no such field
    body = json.dumps({key: sent}).encode()
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return [(r["index"] + 1, r["id"], r["field"], r["error"]) for r in response.json()["rejected"]]


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("form", ["parquet", "csv", "jsonl"])
def test_import_stores_and_rejects_exactly_what_the_api_does(
    form: str, db_url: str, other_url: str, engine: Engine, make_client: MakeClient, tmp_path: Path
) -> None:
    now = time.time()
    records, labels = history(now), labels_of(now)
    settings = load_settings(None, database_url=db_url)
    client = make_client(settings)
    http_rejected = over_http(client, records, "/v1/predictions", "predictions")
    http_label_rejected = over_http(client, labels, "/v1/feedback", "feedback")
    records += IMPORT_ONLY
    labels += labels_only_import_refuses(now)

    if form == "parquet":
        predictions_file = write_parquet(for_parquet(records), tmp_path / "h.parquet", PREDICTION_SCHEMA)
        labels_file = write_parquet(for_parquet(labels), tmp_path / "l.parquet", LABEL_SCHEMA)
    elif form == "csv":
        predictions_file = write_csv(records, tmp_path / "h.csv", list(PREDICTION_SCHEMA.names))
        labels_file = write_csv(labels, tmp_path / "l.csv", list(LABEL_SCHEMA.names))
    else:
        predictions_file = write_jsonl(records, tmp_path / "h.jsonl")
        labels_file = write_jsonl(labels, tmp_path / "l.jsonl")
    imported = create_store_engine(other_url)
    upgrade(imported)
    try:
        report = tmp_path / "rejected.jsonl"
        summary = import_history(
            imported, load_settings(None, database_url=other_url), predictions_file, labels_file, report
        )
        found = rejections_file(report)
        assert [(row, i, f, e) for kind, row, i, f, e in found if kind == "predictions"] == [
            *http_rejected,
            (len(records), "no-ts", "ts", "field required: an imported prediction needs its time"),
        ]
        assert stored_rows(imported) == stored_rows(engine)
        assert summary.inserted == len(stored_rows(engine)) and summary.duplicates == 1  # p3 repeated
        assert summary.new_models == ["clf", "模型", "llm"]
        assert [(row, i, f, e) for kind, row, i, f, e in found if kind == "labels"] == [
            *http_label_rejected,
            (
                len(labels) - 1,
                "p33",
                "labelled_at",
                "field required: an imported label needs the time it was known",
            ),
            (len(labels), "p34", "labelled_at", "timestamp is more than 3600 s in the future"),
        ]
        assert (summary.matched, summary.pending, summary.label_duplicates, summary.conflicts) == (
            32,
            1,
            1,
            1,
        )
        with imported.connect() as conn:
            at = dict(
                conn.execute(
                    text("SELECT prediction_id, labelled_at FROM predictions WHERE labelled_at IS NOT NULL")
                ).all()
            )  # type: ignore[arg-type]
            conflicts = conn.execute(
                text("SELECT prediction_id, kept_correct, rejected_correct FROM feedback_conflicts")
            ).all()
            parked = conn.execute(text("SELECT prediction_id FROM pending_feedback")).scalars().all()
        assert at["p5"] == pytest.approx(now - 1000 + 5, abs=1e-6)
        assert at["str-pred"] == pytest.approx(now - 10, abs=1e-6)
        assert [tuple(c) for c in conflicts] == [("p0", False, True)] and parked == ["later"]
        # Folded, both stores hold the same sketch buckets.
        fold(engine, settings)
        fold(imported, settings)
        assert bucket_rows(imported) == bucket_rows(engine) != []
    finally:
        imported.dispose()
