"""The Spark job on real PySpark (local mode): on two million rows its buckets and detector input
equal calmon's own fold of the same files (``calmon import``); loaded through ``POST /v1/sketches``,
the evaluated windows equal those of the same rows sent over HTTP; the command line posts to a
running daemon and resumes; recalibration fits on the sample it exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from monitor.bulk.importer import import_history
from monitor.calibration.sketch import MOMENTS
from monitor.config import Settings, load_settings
from monitor.evaluation.tick import EvaluationTick
from monitor.recalibration.job import recalibrate
from monitor.spark import job
from monitor.spark.batches import Limits
from monitor.spark.job import Spec, main, parts, sketch
from monitor.spark.partials import BET_COLUMNS, VALUE_COLUMNS
from monitor.store.aggregates import aggregate_pending
from monitor.store.engine import create_store_engine
from monitor.store.migrate import upgrade
from tests.conftest import MakeClient
from tests.helpers import post_feedback, post_predictions
from tests.spark.lake import history
from tests.spark.test_sketch_route import BINS, by_key
from tests.support.daemon import Daemon
from tests.support.polling import eventually

MILLIONS = 2_000_000


def lake_files(tmp_path: Path, n: int, now: float) -> tuple[Path, Path, set[str]]:
    """A prediction and a label file as a lake would hold them, with what calmon's rules are about:
    repeated ids (the earliest wins), conflicting later labels (the first wins), labels of unknown
    predictions, and rows calmon refuses (their ids returned)."""
    predictions, labels = history(n, now, models=("clf", "llm"), segments=("a", "b", "c"), hours=20)
    repeats = predictions.iloc[:: max(1, n // 500)].assign(ts=lambda f: f["ts"] + 1.0, confidence=0.5)
    refused = pd.DataFrame(
        {
            "model": ["clf", "clf", "  ", "clf", "clf"],
            "id": ["bad-conf", "bad-seg", "bad-model", "bad-time", "bad-nan"],
            "segment": ["a", "*", "a", "a", "a"],
            "ts": [now - 60, now - 60, now - 60, now + 86_400 * 3, now - 60],
            "confidence": [1.5, 0.5, 0.5, 0.5, float("nan")],
        }
    )
    table = pd.concat([predictions, repeats, refused], ignore_index=True)
    later = labels.iloc[::7].assign(
        correct=lambda f: ~f["correct"], labelled_at=lambda f: f["labelled_at"] + 600
    )
    strays = pd.DataFrame(
        {"model": ["clf"], "id": ["never-predicted"], "correct": [True], "labelled_at": [now - 30]}
    )
    label_table = pd.concat([labels, later, strays], ignore_index=True).sort_values(
        "labelled_at", kind="stable"
    )
    p, lab = tmp_path / "predictions.parquet", tmp_path / "labels.parquet"
    table.to_parquet(p, index=False)
    label_table.to_parquet(lab, index=False)
    return p, lab, set(refused["id"])


def calmon_fold(engine: Engine, settings: Settings, p: Path, lab: Path, tmp_path: Path) -> set[str]:
    """The same files through ``calmon import`` and the fold the leader runs (with detector input);
    the ids the import refused."""
    summary = import_history(engine, settings, p, lab, tmp_path / "rejected.jsonl")
    cfg = settings.evaluation
    while True:
        with engine.begin() as conn:
            run = aggregate_pending(
                conn, cfg.bucket_seconds, cfg.fine_bins, 500_000, None, evidence_bins=cfg.ece_bins,
                tolerance_of=settings.tolerance_for,
            )  # fmt: skip
        if not run.rows:
            break
    refused = {json.loads(line)["id"] for line in (tmp_path / "rejected.jsonl").read_text().splitlines()}
    assert summary.predictions_rejected == len(refused)
    return refused


def test_on_two_million_rows_the_job_sums_exactly_what_calmon_folds(spark: Any, tmp_path: Path) -> None:
    now = time.time()
    settings = load_settings(
        None, database_url=f"sqlite:///{tmp_path / 'fold.db'}", evaluation={"bucket_seconds": 3600}
    )
    p, lab, refused = lake_files(tmp_path, MILLIONS, now)
    spec = Spec.from_settings(settings, now)
    result = sketch(spark.read.parquet(str(p)), spark.read.parquet(str(lab)), spec)
    sums = result.sums.toPandas()
    series = result.series.toPandas()
    rejected = result.rejected.toPandas()
    result.release()  # two million rows off the shared session

    engine = create_store_engine(f"sqlite:///{tmp_path / 'fold.db'}")
    upgrade(engine)
    assert calmon_fold(engine, settings, p, lab, tmp_path) == refused
    assert set(rejected.loc[rejected["table"] == "predictions", "id"]) == refused

    with engine.connect() as conn:
        stored = pd.read_sql(text("SELECT * FROM sketch_bins"), conn)
        pending = conn.execute(
            text("SELECT model, segment, score, bucket_start, bin, n, d, q, g FROM evidence_pending")
        ).all()
        totals = pd.read_sql(text("SELECT * FROM series_totals"), conn)

    key = ["model", "segment", "score", "bucket_start", "bin"]
    buckets = sums[sums["kind"] == "bucket"].rename(columns=dict(zip(VALUE_COLUMNS, MOMENTS, strict=True)))
    both = stored.merge(buckets, on=key, how="outer", suffixes=("", "_spark"), indicator=True)
    assert (both["_merge"] == "both").all(), both[both["_merge"] != "both"].head()
    assert len(both) > 20_000  # 6 series x 20 hourly buckets x 2 scores x ~120 occupied bins
    for moment in MOMENTS:
        if moment in ("n", "n_l", "sy"):
            np.testing.assert_array_equal(
                both[f"{moment}_spark"], both[moment], err_msg=moment
            )  # counts: exact
        else:
            np.testing.assert_allclose(
                both[f"{moment}_spark"], both[moment], rtol=1e-12, atol=1e-9, err_msg=moment
            )

    folded: dict[tuple[Any, ...], np.ndarray] = {}
    for model, segment, score, bucket_start, bin_, n, d, q, g in pending:
        values = np.concatenate([[n, d, q], np.frombuffer(g, dtype=np.float64)])
        values = np.pad(values, (0, 3 + len(BET_COLUMNS) - values.size))
        k = (model, segment, score, float(bucket_start), int(bin_))
        folded[k] = folded.get(k, 0) + values
    evidence = sums[sums["kind"] == "evidence"]
    spark_evidence = {
        (r.model, r.segment, r.score, float(r.bucket_start), int(r.bin)): np.array(
            [getattr(r, c) for c in ("v0", "v1", "v2", *BET_COLUMNS)]
        )
        for r in evidence.itertuples(index=False)
    }
    assert folded.keys() == spark_evidence.keys() and len(folded) > 1000
    for k, value in folded.items():
        np.testing.assert_allclose(spark_evidence[k], value, rtol=1e-12, atol=1e-9, err_msg=str(k))

    spans = totals.merge(series, on=["model", "segment"])
    assert len(spans) == len(totals) == 6
    np.testing.assert_array_equal(spans["first_ts_x"], spans["first_ts_y"])
    np.testing.assert_array_equal(spans["last_ts_x"], spans["last_ts_y"])


@pytest.fixture(scope="module")
def lake_parts(
    spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """A small history, and the parts the job makes of it under the model name ``clf-lake``."""
    now = time.time()
    predictions, labels = history(6000, now, segments=("a", "b"), hours=5)
    settings = load_settings(None)
    spec = Spec.from_settings(settings, now)
    lake_p = spark.createDataFrame(predictions.assign(model="clf-lake"))
    lake_l = spark.createDataFrame(labels.assign(model="clf-lake"))
    return predictions, labels, list(parts(sketch(lake_p, lake_l, spec), spec, "lake", Limits(records=100)))


def comparable(stats: Any) -> dict[str, Any]:
    found = asdict(stats)
    found.pop("model")
    return found


def test_loaded_through_the_route_the_windows_equal_those_of_the_same_rows_over_http(
    lake_parts: tuple[pd.DataFrame, pd.DataFrame, list[dict[str, Any]]],
    make_client: MakeClient,
    engine: Engine,
    make_settings: Any,
) -> None:
    predictions, labels, documents = lake_parts
    client: TestClient = make_client()
    for i in range(0, len(predictions), 1000):
        assert post_predictions(client, predictions.iloc[i : i + 1000].to_dict("records")).status_code == 200
    feedback = [
        {"model": r["model"], "id": r["id"], "correct": bool(r["correct"])} for r in labels.to_dict("records")
    ]
    for i in range(0, len(feedback), 1000):
        assert post_feedback(client, feedback[i : i + 1000]).status_code == 200
    assert len(documents) > 2
    for document in documents:
        response = client.post("/v1/sketches", json=document)
        assert response.status_code == 201, response.text
    snapshot = EvaluationTick(engine, make_settings()).run()
    http = {(s.segment, s.window, s.score): comparable(s) for s in snapshot.for_model("clf")}
    lake = {(s.segment, s.window, s.score): comparable(s) for s in snapshot.for_model("clf-lake")}
    assert http.keys() == lake.keys() and len(http) >= 12
    for key, stats in http.items():
        assert stats["predictions"] > 0
        for name, value in stats.items():
            if isinstance(value, float):
                assert lake[key][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, name)
            else:
                assert lake[key][name] == value or np.allclose(
                    pd.json_normalize(lake[key][name]).to_numpy(dtype=float),
                    pd.json_normalize(value).to_numpy(dtype=float),
                ), (key, name)
    evidence = {(e["segment"], e["score"]): e for e in snapshot.evidence if e["model"] == "clf"}
    lake_evidence = {(e["segment"], e["score"]): e for e in snapshot.evidence if e["model"] == "clf-lake"}
    assert evidence.keys() == lake_evidence.keys() and evidence
    for key, e in evidence.items():
        assert e["labels"] > 0
        for name in ("labels", "alarm", "change_point"):
            assert lake_evidence[key][name] == e[name], (key, name)
        assert lake_evidence[key]["log10_evidence"] == pytest.approx(
            e["log10_evidence"], rel=1e-9, abs=1e-9
        ), key


def summary_of(out: str) -> dict[str, Any]:
    """The job's summary: the last line of its standard output that is a JSON object."""
    found: dict[str, Any] = json.loads([line for line in out.splitlines() if line.startswith('{"parts"')][-1])
    return found


CONFIG = """
evaluation: {interval_seconds: 1, windows: [1h, 24h], bootstrap_draws: 50}
auth:
  tokens:
    - {name: spark, token_env: CALMON_SPARK_TOKEN, scopes: [admin, read]}
"""


def test_spark_submit_posts_to_a_running_daemon_and_a_rerun_resumes(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    predictions, labels = history(4000, now, segments=("a", "b"), hours=3)
    p, lab = tmp_path / "p.parquet", tmp_path / "l.parquet"
    predictions.assign(segment=predictions["segment"].where(predictions.index != 3, "*")).to_parquet(
        p, index=False
    )
    labels.to_parquet(lab, index=False)
    config = tmp_path / "calmon.yaml"
    config.write_text(CONFIG)
    token = "spark-token-0123456789abc"
    monkeypatch.setenv("CALMON_SPARK_TOKEN", token)
    daemon = Daemon(
        f"sqlite:///{tmp_path / 'calmon.db'}",
        config=config,
        log_path=tmp_path / "daemon.log",
        env={"CALMON_SPARK_TOKEN": token},
    )
    try:
        daemon.wait_healthy()
        argv = [
            "--predictions", str(p), "--labels", str(lab), "--config", str(config), "--run-id", "history-1",
            "--url", daemon.base_url, "--token-env", "CALMON_SPARK_TOKEN",
            "--rejected", str(tmp_path / "rejected"),
            "--output", str(tmp_path / "parts"), "--max-records", "200",
        ]  # fmt: skip
        # as the README runs it: spark-submit (local mode) with the job's file
        submit = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
                  "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
                  "--conf", "spark.ui.enabled=false", job.__file__, *argv]  # fmt: skip
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        first = summary_of(done.stdout)
        assert first["parts"] > 2 and first["accepted"] == first["parts"] and first["rejected_rows"] == 1
        assert len(list((tmp_path / "parts").glob("history-1-*.json"))) == first["parts"]
        reasons = [
            json.loads(line)
            for f in (tmp_path / "rejected").glob("*.json")
            for line in f.read_text().splitlines()
        ]
        assert [(r["id"], r["reason"]) for r in reasons] == [("p3", "segment: not a calmon segment")]

        assert main(argv) == 0  # the same run again, in process: every part a duplicate, nothing twice
        second = summary_of(capsys.readouterr().out)
        assert second["duplicate"] == first["parts"] and second["accepted"] == 0

        import httpx

        headers = {"Authorization": f"Bearer {token}"}

        def counted() -> bool:
            listed = httpx.get(f"{daemon.base_url}/v1/models", headers=headers, timeout=5).json()["models"]
            return (
                bool(listed)
                and listed[0]["predictions"] == 3999
                and listed[0]["labelled"] == int((labels["id"] != "p3").sum())
            )

        eventually(counted, 30, 0.2, "the daemon counts the sketched history once")
    finally:
        daemon.stop()


def test_recalibration_fits_on_the_sample_the_job_exports(spark: Any, tmp_path: Path) -> None:
    """Real miscalibrated predictions: scikit-learn's digits with Gaussian naive Bayes, which is
    overconfident; only sketches and the job's sample reach calmon."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB

    x, y = load_digits(return_X_y=True)
    x_fit, x_rest, y_fit, y_rest = train_test_split(x, y, test_size=0.7, random_state=0)
    probs = GaussianNB().fit(x_fit, y_fit).predict_proba(x_rest)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_rest
    now = time.time()
    n = confidence.size
    ts = now - 7200 + np.arange(n) * (7000 / n)
    predictions = pd.DataFrame(
        {
            "model": "digits",
            "id": [f"d{i}" for i in range(n)],
            "segment": "default",
            "ts": ts,
            "confidence": confidence,
        }
    )
    labels = pd.DataFrame(
        {"model": "digits", "id": predictions["id"], "correct": correct, "labelled_at": ts + 60}
    )
    url = f"sqlite:///{tmp_path / 'calmon.db'}"
    settings = load_settings(None, database_url=url, recalibration={"min_rows": 200})
    engine = create_store_engine(url)
    upgrade(engine)
    spec = Spec.from_settings(settings, now)
    documents = list(
        parts(
            sketch(spark.createDataFrame(predictions), spark.createDataFrame(labels), spec),
            spec,
            "digits",
            Limits(),
        )
    )
    assert sum(len(d["sample"]) for d in documents) == n
    from monitor.collector.api import create_app

    with TestClient(create_app(settings, engine)) as client:
        for document in documents:
            assert client.post("/v1/sketches", json=document).status_code == 201
    EvaluationTick(engine, settings).run()
    outcome = recalibrate(engine, settings, "digits", now=now)
    assert outcome.outcome == "promoted", outcome.reason
    with engine.connect() as conn:
        metrics = json.loads(
            conn.execute(text("SELECT metrics FROM calibrators WHERE status = 'active'")).scalar_one()
        )
    before, after = metrics["serving"]["ece"], metrics["validation"]["ece"]
    assert after < 0.5 * before, metrics


def test_labels_compared_with_predicted_and_the_first_label_wins_as_over_http(
    spark: Any, client: TestClient, engine: Engine, make_settings: Any, tmp_path: Path
) -> None:
    """Labels given as ``label`` (compared with ``predicted``) or ``correct`` in one table, later
    conflicting labels, a repeated prediction: the job reads them as the API does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    now = time.time()
    n = 3000
    rng = np.random.default_rng(5)
    ids = [f"p{i}" for i in range(n)]
    ts = np.sort(now - 7200 + rng.uniform(0, 7000, n))
    predicted = rng.choice(["cat", "dog", "7"], n)
    confidence = rng.beta(5, 2, n)
    segment = rng.choice(["a", "b"], n)
    predictions = pd.DataFrame(
        {
            "model": "clf",
            "id": ids,
            "segment": segment,
            "ts": ts,
            "confidence": confidence,
            "predicted": predicted,
        }
    )
    repeated = predictions.iloc[:50].assign(ts=lambda f: f["ts"] + 5.0, confidence=0.3)  # later: ignored
    chosen = np.flatnonzero(rng.random(n) < 0.7)
    as_correct = rng.random(chosen.size) < 0.3
    truth = rng.choice(["cat", "dog", "7"], chosen.size)
    first = [
        {"model": "clf", "id": ids[i], "correct": bool(rng.random() < 0.6) if c else None,
         "label": None if c else str(t), "labelled_at": ts[i] + 60.0}
        for i, c, t in zip(chosen.tolist(), as_correct.tolist(), truth.tolist(), strict=True)
    ]  # fmt: skip
    later = [
        dict(
            r, correct=None, label="dog" if r["label"] != "dog" else "cat", labelled_at=r["labelled_at"] + 300
        )
        for r in first[::6]
    ]
    labels = sorted(first + later, key=lambda r: r["labelled_at"])

    for i in range(0, n, 1000):
        records = [dict(r) for r in predictions.iloc[i : i + 1000].to_dict("records")]
        assert post_predictions(client, records).status_code == 200
    assert post_predictions(client, repeated.to_dict("records")).status_code == 200
    feedback = [
        {
            "model": r["model"],
            "id": r["id"],
            **({"correct": r["correct"]} if r["correct"] is not None else {"label": r["label"]}),
        }
        for r in labels
    ]
    for i in range(0, len(feedback), 1000):
        assert post_feedback(client, feedback[i : i + 1000]).status_code == 200

    lake = pd.concat([predictions, repeated]).assign(model="clf-lake")
    p, lab = tmp_path / "p.parquet", tmp_path / "l.parquet"
    lake.to_parquet(p, index=False)
    pq.write_table(
        pa.table(
            {
                "model": ["clf-lake"] * len(labels),
                "id": [r["id"] for r in labels],
                "correct": pa.array([r["correct"] for r in labels], pa.bool_()),
                "label": pa.array([r["label"] for r in labels], pa.string()),
                "labelled_at": [r["labelled_at"] for r in labels],
            }
        ),
        lab,
    )
    settings = make_settings()
    spec = Spec.from_settings(settings, now)
    for document in parts(
        sketch(spark.read.parquet(str(p)), spark.read.parquet(str(lab)), spec), spec, "labels", Limits()
    ):
        assert client.post("/v1/sketches", json=document).status_code == 201
    EvaluationTick(engine, settings).fold(time.time())
    http, sketched = by_key(engine, BINS, "clf"), by_key(engine, BINS, "clf-lake")
    assert http.keys() == sketched.keys() and http
    for key, value in http.items():
        np.testing.assert_allclose(sketched[key], value, rtol=1e-12, atol=1e-9, err_msg=str(key))


def test_the_parts_do_not_depend_on_row_order_or_partitioning(spark: Any) -> None:
    """A shuffle delivers a partition's rows in an order that depends on the upstream partitions
    (spark-submit's 200 shuffle partitions against a session's 4: a resumed upload met a 409 that
    way); the job sums them in a fixed order, so every run makes the same parts to the bit (calmon's
    duplicate check is exact). Here the same rows come in three orders and three partitionings."""
    now = time.time()
    # dense (~100 rows a bin): with a few rows a bin, float sums hardly depend on order
    predictions, labels = history(20_000, now, models=("clf",), segments=("a",), hours=1)
    settings = load_settings(None)
    spec = Spec.from_settings(settings, now)
    orders = [predictions, predictions.iloc[::-1], predictions.sample(frac=1.0, random_state=3)]
    shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    runs = []
    try:
        for rows, partitions in zip(orders, (4, 9, 2), strict=True):
            spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
            result = sketch(spark.createDataFrame(rows), spark.createDataFrame(labels), spec, partitions + 1)
            runs.append([json.dumps(d, sort_keys=True) for d in parts(result, spec, "same", Limits())])
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
    assert len(runs[0]) > 1
    assert runs[0] == runs[1] == runs[2]
