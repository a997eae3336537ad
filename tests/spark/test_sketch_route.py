"""``POST /v1/sketches``: a batch computed outside calmon lands in the same buckets, totals, hours and
detector input as the same rows sent over HTTP; it is folded once, re-added by a rebuild, refused
whole (naming the field) when no set of predictions could have produced it; SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from monitor.config import Settings
from monitor.evaluation.tick import EvaluationTick
from monitor.spark.batches import Limits
from monitor.store.aggregates import rebuild
from monitor.store.engine import READ_ONLY
from monitor.store.retention import delete_expired_batches
from monitor.store.schema import evidence_pending, sketch_batches, sketch_bins, training_sample
from monitor.store.training import labelled_rows
from tests.helpers import post_feedback, post_predictions
from tests.spark.lake import history, joined, parts_of

LAKE = "clf-lake"  # the same rows, sent as sketches under another model name


def send_over_http(client: TestClient, predictions: Any, labels: Any) -> None:
    records = predictions.to_dict("records")
    for i in range(0, len(records), 1000):
        assert post_predictions(client, records[i : i + 1000]).status_code == 200
    feedback = [
        {"model": r["model"], "id": r["id"], "correct": bool(r["correct"])} for r in labels.to_dict("records")
    ]
    for i in range(0, len(feedback), 1000):
        assert post_feedback(client, feedback[i : i + 1000]).status_code == 200


def by_key(engine: Engine, sql: str, model: str) -> dict[tuple[Any, ...], np.ndarray]:
    """Rows of a query whose first columns (all but the numbers) are the key, for one model."""
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"model": model}).all()
    found: dict[tuple[Any, ...], np.ndarray] = {}
    for row in rows:
        key = tuple(v for v in row if isinstance(v, str | int) and not isinstance(v, bool))
        numbers = np.array([float(v) for v in row if isinstance(v, float)])
        found[key] = numbers
    return found


BINS = (
    "SELECT segment, score, CAST(bucket_start AS BIGINT), bin, n, sum_p, n_l, s1, s2, s3, s4, sy, syp, sll "
    "FROM sketch_bins WHERE model = :model"
)
HOURS = (
    "SELECT segment, score, CAST(hour_start AS BIGINT), bin, n, sum_p, n_l, s1, s2, s3, s4, sy, syp, sll "
    "FROM sketch_hours WHERE model = :model"
)
TOTALS = (
    "SELECT segment, predictions, labelled, correct, confidence_sum_labelled, first_ts, last_ts "
    "FROM series_totals WHERE model = :model"
)
EVIDENCE = (
    "SELECT segment, score, CAST(bucket_start AS BIGINT), bin, SUM(n), SUM(d), SUM(q) FROM evidence_pending "
    "WHERE model = :model GROUP BY segment, score, bucket_start, bin"
)


def assert_same(a: dict[tuple[Any, ...], np.ndarray], b: dict[tuple[Any, ...], np.ndarray]) -> None:
    assert a.keys() == b.keys()
    assert a, "nothing to compare"
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-9, err_msg=str(key))


def folded(engine: Engine, settings: Settings) -> int:
    tick = EvaluationTick(engine, settings)
    return tick.fold(time.time())


def batches(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(sketch_batches)).scalar_one())


def test_a_sketch_batch_lands_where_the_same_rows_over_http_land(
    client: TestClient, engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    now = time.time()
    predictions, labels = history(3000, now)
    send_over_http(client, predictions, labels)
    rows = joined(predictions, labels).assign(model=LAKE)
    parts = parts_of(rows, settings, limits=Limits(records=40))  # several parts
    assert len(parts) > 3
    for part in parts:
        response = client.post("/v1/sketches", json=part)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "accepted"
    assert client.get(f"/v1/sketches/{parts[0]['batch_id']}").json()["folded_at"] is None
    folded(engine, settings)
    assert client.get(f"/v1/sketches/{parts[0]['batch_id']}").json()["folded_at"] is not None
    for sql in (BINS, HOURS, TOTALS, EVIDENCE):
        assert_same(by_key(engine, sql, "clf"), by_key(engine, sql, LAKE))

    before = by_key(engine, BINS, LAKE)
    folded(engine, settings)  # nothing new: folded once
    after = by_key(engine, BINS, LAKE)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)

    # a rebuild recomputes the buckets from raw rows, and adds the stored batches again
    with engine.begin() as conn:
        rebuild(
            conn,
            settings.evaluation.bucket_seconds,
            settings.evaluation.fine_bins,
            hour_bins=settings.evaluation.ece_bins,
        )
    for sql in (BINS, HOURS, TOTALS):
        assert_same(by_key(engine, sql, "clf"), by_key(engine, sql, LAKE))
    # the detectors' input is never re-added (every label is bet on once)
    with engine.connect() as conn:
        bets = conn.execute(
            select(func.sum(evidence_pending.c.n)).where(evidence_pending.c.model == LAKE)
        ).scalar()
    assert bets == pytest.approx(float((rows["correct"] >= 0).sum()) * 3)  # raw, calibrated, paired

    listed = {m["model"]: m for m in client.get("/v1/models").json()["models"]}
    for field in ("predictions", "labelled"):
        assert (
            listed[LAKE][field] == listed["clf"][field] == (3000 if field == "predictions" else len(labels))
        )


def test_resending_is_a_no_op_and_another_batch_under_the_same_id_a_conflict(
    client: TestClient, engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    predictions, labels = history(400, time.time())
    part = parts_of(joined(predictions, labels), settings)[0]
    assert client.post("/v1/sketches", json=part).status_code == 201
    again = client.post("/v1/sketches", json=part)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    changed = copy.deepcopy(part)
    changed["series"][0]["last_ts"] += 1.0
    conflict = client.post("/v1/sketches", json=changed)
    assert conflict.status_code == 409 and conflict.json()["field"] == "batch_id"
    assert batches(engine) == 1
    folded(engine, settings)
    with engine.connect() as conn:
        n = conn.execute(
            select(func.sum(sketch_bins.c.n)).where(
                sketch_bins.c.score == "raw", sketch_bins.c.bin < settings.evaluation.fine_bins
            )
        ).scalar()
    assert n == 400


def _valid(settings: Settings, sample: bool = False) -> dict[str, Any]:
    """One valid part of a small history (with its training sample in it, if asked)."""
    predictions, labels = history(300, time.time(), models=("clf",), segments=("a",), hours=1)
    part = parts_of(joined(predictions, labels), settings, sample=20)
    return part[0] | {"sample": part[-1]["sample"] if sample else []}


def _bucket(doc: dict[str, Any], score: str = "raw") -> dict[str, Any]:
    return next(b for b in doc["buckets"] if b["score"] == score and len(b["bins"]) > 3)


def _moment(doc: dict[str, Any], name: str, value: Callable[[float], float]) -> str:
    from monitor.calibration.sketch import MOMENTS

    bucket = _bucket(doc)
    i = doc["buckets"].index(bucket)
    row = bucket["moments"][1]
    k = MOMENTS.index(name)
    row[k] = value(row[k])
    return f"buckets[{i}].moments[1][{k}]"


def _bins(doc: dict[str, Any], change: Callable[[list[int]], None], suffix: str) -> str:
    """Change the bins of a bucket that has several (the history's edge buckets may hold one row)."""
    bucket = _bucket(doc)
    change(bucket["bins"])
    return f"buckets[{doc['buckets'].index(bucket)}].bins{suffix}"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], str]:
    def change(doc: dict[str, Any]) -> str:
        keys = path.split(".")
        target: Any = doc
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
        return path

    return change


def _evidence(doc: dict[str, Any], score: str = "raw") -> tuple[int, dict[str, Any]]:
    return next((i, e) for i, e in enumerate(doc["evidence"]) if e["score"] == score)


REFUSALS: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
    ("fine bins", _set("fine_bins", 60), "fine_bins"),
    ("bucket width", _set("bucket_seconds", 60), "bucket_seconds"),
    ("evidence bins", _set("evidence_bins", 20), "evidence_bins"),
    ("bad batch id", _set("batch_id", "../x"), "batch_id"),
    ("unknown field", _set("extra", 1), "extra"),
    (
        "score",
        lambda d: (d["buckets"][0].__setitem__("score", "served"), "buckets[0].score")[1],
        "buckets[0].score",
    ),
    ("reserved segment", lambda d: _set("buckets.0.segment", "*")(d), "buckets[0].segment"),
    (
        "misaligned bucket",
        lambda d: (
            d["buckets"][0].__setitem__("bucket_start", d["buckets"][0]["bucket_start"] + 1),
            "buckets[0].bucket_start",
        )[1],
        "buckets[0].bucket_start",
    ),
    (
        "future bucket",
        lambda d: (d["buckets"][0].__setitem__("bucket_start", 4102444800.0), "buckets[0].bucket_start")[1],
        "buckets[0].bucket_start",
    ),
    (
        "expired bucket",
        lambda d: (d["buckets"][0].__setitem__("bucket_start", 300.0), "buckets[0].bucket_start")[1],
        "buckets[0].bucket_start",
    ),
    (
        "bins and moments",
        lambda d: (d["buckets"][0]["moments"].pop(), "buckets[0].moments")[1],
        "buckets[0].moments",
    ),
    ("repeated bin", lambda d: _bins(d, lambda bins: bins.__setitem__(1, bins[0]), ""), ""),
    ("bin beyond", lambda d: _bins(d, lambda bins: bins.__setitem__(0, 5000), "[0]"), ""),
    ("fractional count", lambda d: _moment(d, "n", lambda v: v + 0.5), ""),
    ("sum of confidences beyond the bin", lambda d: _moment(d, "sum_p", lambda v: v + 0.5), ""),
    ("squares beyond the bin", lambda d: _moment(d, "s2", lambda v: v * 2 + 1), ""),
    ("more correct than labelled", lambda d: _moment(d, "sy", lambda v: v + 100), ""),
    ("positive log-likelihood", lambda d: _moment(d, "sll", lambda v: 1.0), ""),
    ("nan", lambda d: _moment(d, "s1", lambda v: float("nan")), ""),
]


@pytest.mark.parametrize(("name", "change", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_batch_no_predictions_could_produce_is_refused_whole_naming_the_field(
    client: TestClient,
    engine: Engine,
    make_settings: Callable[..., Settings],
    name: str,
    change: Callable[[dict[str, Any]], str],
    field: str,
) -> None:
    doc = _valid(make_settings())
    expected = change(doc)
    if name == "nan":
        import json

        body = json.dumps(doc)  # NaN is not JSON: a 400 naming the body
        response = client.post("/v1/sketches", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert batches(engine) == 0
        return
    response = client.post("/v1/sketches", json=doc)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == (field or expected), response.json()
    assert batches(engine) == 0


def test_batch_level_rules(
    client: TestClient, engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    base = _valid(settings, sample=True)

    def refused(doc: dict[str, Any], field: str, text_: str) -> None:
        response = client.post("/v1/sketches", json=doc)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["field"] == field and text_ in body["error"], body
        assert batches(engine) == 0

    doc = copy.deepcopy(base)
    doc["buckets"] = [b for b in doc["buckets"] if b["score"] == "raw"]
    refused(doc, "buckets[0]", "both scores")

    doc = copy.deepcopy(base)
    calibrated = _bucket(doc, "calibrated")
    calibrated["moments"][0][0] += 1  # one more prediction than the raw score counts
    calibrated["moments"][0][1] += calibrated["moments"][0][1] / (calibrated["moments"][0][0] - 1)
    first = next(i for i, b in enumerate(doc["buckets"]) if b["bucket_start"] == calibrated["bucket_start"])
    refused(doc, f"buckets[{first}]", "calibrated counts")

    doc = copy.deepcopy(base)
    tail = next(b for b in doc["buckets"] if max(b["bins"]) >= settings.evaluation.fine_bins)
    j = max(range(len(tail["bins"])), key=lambda k: tail["bins"][k])
    tail["bins"].pop(j)
    tail["moments"].pop(j)
    refused(doc, f"buckets[{doc['buckets'].index(tail)}].moments", "tail bins")

    doc = copy.deepcopy(base)
    doc["series"] = []
    refused(doc, "series", "no first_ts/last_ts")

    doc = copy.deepcopy(base)
    doc["series"].append(dict(doc["series"][0], segment="elsewhere"))
    refused(doc, "series[1]", "no bucket")

    doc = copy.deepcopy(base)
    i, e = _evidence(doc)
    e["tolerance"] = 0.05
    refused(doc, f"evidence[{i}].tolerance", "calmon bets")

    doc = copy.deepcopy(base)
    i, e = _evidence(doc)
    e["g"][2][0] = 50.0
    refused(doc, f"evidence[{i}].g[2][0]", "bets")

    doc = copy.deepcopy(base)
    i, e = _evidence(doc)
    e["n"] += 1
    e["q"] = min(e["q"], e["n"])
    refused(doc, "evidence", "bets on")

    doc = copy.deepcopy(base)
    i, e = _evidence(doc, "paired")
    e["g"] = [[0.0, 0.0]]
    refused(doc, f"evidence[{i}].g", "no bets")

    doc = copy.deepcopy(base)
    doc["evidence"] = [e for e in doc["evidence"] if e["score"] != "paired"]
    refused(doc, "evidence", "no paired evidence")

    doc = copy.deepcopy(base)
    doc["sample"][0]["confidence"] = 1.5
    refused(doc, "sample[0].confidence", "[0, 1]")

    doc = copy.deepcopy(base)
    doc["sample"][0]["ts"] = time.time() - 40 * 86400
    refused(doc, "sample[0].ts", "retention")

    doc = copy.deepcopy(base)
    sample_only = dict(doc, buckets=[], series=[], evidence=[], batch_id="sample-only")
    sample_only["sample"][0]["model"] = "unknown-model"
    response = client.post("/v1/sketches", json=sample_only)
    assert response.status_code == 422 and response.json()["field"] == "sample[0].model", response.text

    assert client.post("/v1/sketches", json=base).status_code == 201


def test_transport_and_size_refusals(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    client = make_client(make_settings(limits={"max_batch_records": 5, "max_models": 1}))
    settings = make_settings()
    doc = _valid(settings)
    assert (
        client.post("/v1/sketches", content=b"{", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert (
        client.post("/v1/sketches", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    )
    too_many = client.post("/v1/sketches", json=doc)
    assert too_many.status_code == 413 and too_many.json()["field"] == "buckets"
    capped = make_client(make_settings(limits={"max_models": 1}))
    assert post_predictions(capped, [{"model": "other", "id": "x", "confidence": 0.5}]).status_code == 200
    over = capped.post("/v1/sketches", json=doc)
    assert over.status_code == 422 and over.json()["field"] == "buckets[0].model", over.text
    assert batches(engine) == 0


def test_sketches_need_the_admin_scope(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Settings], engine: Engine
) -> None:
    settings = make_settings(auth={"tokens": [
        {"name": "app", "token": "ingest-token-0123456789", "scopes": ["ingest", "read"]},
        {"name": "ops", "token": "admin-token-01234567890", "scopes": ["admin"]},
    ]})  # fmt: skip
    client = make_client(settings)
    doc = _valid(settings)
    assert client.post("/v1/sketches", json=doc).status_code == 401
    ingest = {"Authorization": "Bearer ingest-token-0123456789"}
    assert client.post("/v1/sketches", json=doc, headers=ingest).status_code == 403
    assert batches(engine) == 0
    admin = {"Authorization": "Bearer admin-token-01234567890"}
    assert client.post("/v1/sketches", json=doc, headers=admin).status_code == 201
    assert client.get(f"/v1/sketches/{doc['batch_id']}", headers=ingest).status_code == 200
    assert client.get("/v1/sketches/nothing-here", headers=ingest).status_code == 404


def test_the_training_sample_is_fitted_on_and_expires_with_the_raw_rows(
    client: TestClient, engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    doc = _valid(settings, sample=True)
    assert client.post("/v1/sketches", json=doc).status_code == 201
    folded(engine, settings)
    with engine.connect().execution_options(**READ_ONLY) as conn:
        rows = labelled_rows(conn, "clf", "a", 1000)
    assert rows.size == len(doc["sample"]) == 20
    assert list(rows.ts) == sorted(rows.ts, reverse=True)
    assert sorted(rows.p) == sorted(r["confidence"] for r in doc["sample"])
    with engine.begin() as conn:
        gone = delete_expired_batches(conn, buckets_before=0.0, sample_before=time.time() + 10)
        left = conn.execute(select(func.count()).select_from(training_sample)).scalar_one()
    assert (gone, left) == (0, 0)  # the sample expired; the batch stays until its buckets expire
    with engine.begin() as conn:
        assert delete_expired_batches(conn, buckets_before=time.time() + 10, sample_before=0.0) == 1
