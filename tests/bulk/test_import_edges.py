"""``calmon import`` beyond the API's rules: files refused whole before any write, resuming, chunk
boundaries, the model cap, serving calibrators, time columns, the command line."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, func, select, text

from monitor.bulk.importer import import_history
from monitor.bulk.prefetch import prefetched
from monitor.bulk.sources import ImportInputError
from monitor.calibration.calibrators import PlattScaling
from monitor.cli import main
from monitor.collector.serving import RegistryScorer
from monitor.config import load_settings
from monitor.store import calibrators as registry
from monitor.store.schema import models, predictions


def table(n: int, now: float, start: int = 0, **overrides: Any) -> pa.Table:
    columns: dict[str, Any] = {
        "model": [f"m{i % 3}" for i in range(start, start + n)],
        "id": [f"p{i}" for i in range(start, start + n)],
        "segment": [f"s{i % 2}" for i in range(start, start + n)],
        "ts": [now - 7200.0 + i for i in range(start, start + n)],
        "confidence": [0.5 + (i % 50) / 100 for i in range(start, start + n)],
    }
    columns.update(overrides)
    return pa.table(columns)


def parquet(t: pa.Table, path: Path) -> Path:
    pq.write_table(t, path)
    return path


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(predictions)).scalar_one())


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"extra": [1, 2]}, "unknown column 'extra'"),
        ({"id": [1, 2]}, "column 'id' holds int64; the API takes strings"),
        ({"ts": pa.array([datetime(2026, 1, 1), datetime(2026, 1, 2)])}, "timestamp without a time zone"),
        ({"confidence": ["0.5", "0.6"]}, "column 'confidence' holds string; the API takes numbers"),
    ],
)
def test_a_file_the_api_could_never_accept_is_refused_whole_before_any_write(
    engine: Engine, db_url: str, tmp_path: Path, columns: dict[str, Any], message: str
) -> None:
    good = parquet(table(2, time.time()), tmp_path / "good.parquet")
    bad = parquet(table(2, time.time(), **columns), tmp_path / "bad.parquet")
    settings = load_settings(None, database_url=db_url)
    with pytest.raises(ImportInputError, match=message):
        import_history(engine, settings, bad, None, tmp_path / "r.jsonl")
    bad_labels = tmp_path / "labels.csv"
    bad_labels.write_text("model,id,correct,labelled_at,comment\n")
    with pytest.raises(ImportInputError, match="unknown column 'comment'"):
        import_history(engine, settings, good, bad_labels, tmp_path / "r.jsonl")
    assert count(engine) == 0  # the good file was not imported either: both are checked first


def test_missing_columns_and_formats_are_named(engine: Engine, db_url: str, tmp_path: Path) -> None:
    settings = load_settings(None, database_url=db_url)
    no_ts = parquet(table(2, time.time()).drop(["ts"]), tmp_path / "no-ts.parquet")
    with pytest.raises(ImportInputError, match="missing column 'ts'"):
        import_history(engine, settings, no_ts, None, tmp_path / "r.jsonl")
    (tmp_path / "h.xlsx").write_text("x")
    with pytest.raises(ImportInputError, match=r"unknown format '\.xlsx'"):
        import_history(engine, settings, tmp_path / "h.xlsx", None, tmp_path / "r.jsonl")
    (tmp_path / "labels.csv").write_text("model,id,labelled_at\nm,p,1\n")
    with pytest.raises(ImportInputError, match="labels need a 'correct' or a 'label' column"):
        import_history(engine, settings, None, tmp_path / "labels.csv", tmp_path / "r.jsonl")


def test_an_interrupted_import_resumes_by_running_it_again(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    now = time.time()
    settings = load_settings(None, database_url=db_url)
    whole = parquet(table(500, now), tmp_path / "whole.parquet")
    part = parquet(table(500, now).slice(0, 180), tmp_path / "part.parquet")  # as far as a crash got
    first = import_history(engine, settings, part, None, tmp_path / "r.jsonl", chunk_rows=64)
    assert (first.inserted, first.duplicates) == (180, 0)
    again = import_history(engine, settings, whole, None, tmp_path / "r.jsonl", chunk_rows=64)
    assert (again.inserted, again.duplicates) == (320, 180)
    assert count(engine) == 500
    with engine.connect() as conn:
        stored = conn.execute(select(predictions.c.prediction_id, predictions.c.raw_confidence)).all()
    assert sorted(stored) == sorted(
        zip(table(500, now)["id"].to_pylist(), table(500, now)["confidence"].to_pylist(), strict=True)
    )


def test_chunk_boundaries_keep_the_first_row_of_an_id_and_the_earliest_first_seen(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    now = time.time()
    t = pa.table(
        {
            "model": ["m"] * 6,
            "id": ["a", "b", "c", "a", "d", "b"],
            "ts": [now - 100, now - 200, now - 300, now - 999, now - 5000, now - 10],
            "confidence": [0.1, 0.2, 0.3, 0.9, 0.4, 0.8],
        }
    )
    settings = load_settings(None, database_url=db_url)
    summary = import_history(
        engine, settings, parquet(t, tmp_path / "h.parquet"), None, tmp_path / "r.jsonl", chunk_rows=2
    )
    assert (summary.inserted, summary.duplicates) == (4, 2)
    with engine.connect() as conn:
        kept = dict(conn.execute(select(predictions.c.prediction_id, predictions.c.raw_confidence)).all())
        created = conn.execute(select(models.c.created_at).where(models.c.model == "m")).scalar_one()
    assert kept == {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    assert created == pytest.approx(now - 5000)  # from the third chunk, lowered


def test_models_beyond_the_cap_are_rejected_as_the_api_rejects_them(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    settings = load_settings(None, database_url=db_url, limits={"max_models": 2})
    t = table(9, time.time())  # models m0, m1, m2 in turn
    summary = import_history(
        engine, settings, parquet(t, tmp_path / "h.parquet"), None, tmp_path / "r.jsonl", chunk_rows=4
    )
    assert summary.new_models == ["m0", "m1"] and summary.inserted == 6
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [(r["row"], r["id"], r["field"]) for r in lines] == [
        (3, "p2", "model"),
        (6, "p5", "model"),
        (9, "p8", "model"),
    ]
    assert lines[0]["error"] == "calmon tracks limits.max_models = 2 models; 'm2' would be one more"


def test_imported_predictions_are_scored_by_the_calibrators_serving_now(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    now = time.time()
    with engine.begin() as conn:
        record = registry.create(
            conn, "m1", "*", PlattScaling(a=1.3, b=-0.2), now, status="candidate", reason="test"
        )
        registry.activate(conn, record.id, now, "test", {})
    settings = load_settings(None, database_url=db_url)
    t = table(30, now)
    import_history(engine, settings, parquet(t, tmp_path / "h.parquet"), None, tmp_path / "r.jsonl")
    scorer = RegistryScorer()
    scorer.refresh(engine, now)
    with engine.connect() as conn:
        rows = conn.execute(
            select(predictions.c.model, predictions.c.segment, predictions.c.raw_confidence,
                   predictions.c.calibrated_confidence, predictions.c.calibrator_version)
        ).all()  # fmt: skip
    for model, segment, raw, calibrated, version in rows:
        expected, expected_version = scorer.score(model, segment, [raw])
        assert (calibrated, version) == (expected[0], expected_version)
    assert {r.calibrator_version for r in rows if r.model == "m1"} == {str(record.version)}
    assert {r.calibrator_version for r in rows if r.model != "m1"} == {"identity"}
    assert any(abs(r.calibrated_confidence - r.raw_confidence) > 0.01 for r in rows if r.model == "m1")


def test_time_columns_as_timestamps_and_rfc3339_text_mean_the_same_seconds(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    now = float(int(time.time()))
    seconds = [now - 7200.0, now - 3600.5]
    as_dates = pa.array([datetime.fromtimestamp(s, UTC) for s in seconds], pa.timestamp("us", tz="UTC"))
    texts = [datetime.fromtimestamp(s, UTC).isoformat() for s in seconds]
    settings = load_settings(None, database_url=db_url)
    for name, column in (("dates", as_dates), ("texts", pa.array(texts))):
        t = table(2, now, start={"dates": 0, "texts": 10}[name], ts=column)
        summary = import_history(
            engine, settings, parquet(t, tmp_path / f"{name}.parquet"), None, tmp_path / "r.jsonl"
        )
        assert summary.inserted == 2, summary
    with engine.connect() as conn:
        stored = dict(conn.execute(select(predictions.c.prediction_id, predictions.c.ts)).all())
    assert [stored["p0"], stored["p1"]] == seconds and [stored["p10"], stored["p11"]] == seconds


def test_the_command_line_imports_prints_a_summary_and_exits_2_on_a_bad_file(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    history = parquet(table(10, now), tmp_path / "h.parquet")
    labels = tmp_path / "l.jsonl"
    labels.write_text(
        "".join(
            orjson.dumps({"model": "m0", "id": f"p{i}", "correct": True, "labelled_at": now - 60}).decode()
            + "\n"
            for i in (0, 3, 99)
        )
    )
    rejected = tmp_path / "rejected.jsonl"
    args = [
        "import",
        "--database-url",
        db_url,
        "--input",
        str(history),
        "--labels",
        str(labels),
        "--rejected",
        str(rejected),
    ]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "predictions: 10 read, 10 inserted, 0 already stored, 0 rejected" in out
    assert "labels: 3 read, 2 applied, 1 parked" in out
    assert main([*args, "--json", "--no-progress"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["inserted"], summary["duplicates"], summary["label_duplicates"]) == (
        0,
        10,
        3,
    )  # parked too
    assert not rejected.exists()
    (tmp_path / "empty.csv").write_text("model,id,ts,confidence\n")
    assert (
        main(["import", "--database-url", db_url, "--input", str(tmp_path / "empty.csv"), "--no-progress"])
        == 0
    )
    assert capsys.readouterr().out == "no rows read: the files hold no data rows\n"
    (tmp_path / "bad.csv").write_text("model,id,when\n")
    assert main(["import", "--database-url", db_url, "--input", str(tmp_path / "bad.csv")]) == 2
    assert "unknown column 'when'" in capsys.readouterr().err
    assert main(["import", "--database-url", db_url]) == 2


def test_prefetch_hands_the_readers_error_over_and_stops_when_abandoned() -> None:
    def failing() -> Any:
        yield 1
        raise ValueError("damaged file")

    got = []
    with pytest.raises(ValueError, match="damaged file"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    produced: list[int] = []

    def endless() -> Any:
        for i in range(10**9):
            produced.append(i)
            yield i

    stream = prefetched(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the reader thread stops instead of reading on
    time.sleep(0.3)
    assert len(produced) <= 5


def test_csv_booleans_vectors_and_numbers_are_read_as_a_json_client_sends_them(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    now = time.time()
    (tmp_path / "h.csv").write_text(
        "model,id,ts,probs,predicted\n"
        f'"m","a",{now - 60},"[0.25, 0.75]",\n'
        f'"m","b",{now - 60},"[0.9, 0.1]","7"\n'
    )
    (tmp_path / "l.csv").write_text(
        f'model,id,correct,labelled_at\n"m","a",TRUE,{now - 1}\n"m","b",0,{now - 1}\n'
        f'"m","c",maybe,{now - 1}\n'
    )
    settings = load_settings(None, database_url=db_url)
    summary = import_history(engine, settings, tmp_path / "h.csv", tmp_path / "l.csv", tmp_path / "r.jsonl")
    assert (summary.inserted, summary.matched, summary.labels_rejected) == (2, 2, 1)
    with engine.connect() as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                text("SELECT prediction_id, raw_confidence, predicted, correct FROM predictions")
            )
        }
    assert rows == {"a": (0.75, "1", True), "b": (0.9, "7", False)}
    rejected = orjson.loads((tmp_path / "r.jsonl").read_bytes().splitlines()[0])
    assert (rejected["row"], rejected["field"]) == (3, "correct")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_every_format_is_read_in_chunks_of_bounded_size(tmp_path: Path, suffix: str) -> None:
    """What bounds an import's memory: a chunk, never the file (with the prefetch depth, 3 chunks)."""
    from monitor.bulk.sources import open_source

    t = table(1000, time.time())
    path = tmp_path / f"h{suffix}"
    if suffix == ".parquet":
        parquet(t, path)
    elif suffix == ".csv":
        t.to_pandas().to_csv(path, index=False)
    else:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in t.to_pylist()))
    source = open_source(path, "predictions", chunk_rows=100)
    chunks = [chunk for chunk, _ in source.chunks]
    assert all(len(c) <= 100 for c in chunks) and sum(len(c) for c in chunks) == 1000
    assert [int(c.rows[0]) for c in chunks][:2] == [1, int(chunks[0].rows[-1]) + 1]


def test_csv_rows_of_the_wrong_width_are_rejected_rows_and_the_file_reads_on(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """A row pyarrow cannot split into the header's fields is a rejected row with its number and
    text, as a JSON Lines line that is not JSON is; the rows after it keep their own numbers (a
    quoted newline inside a value is one row) and are imported."""
    now = time.time()
    (tmp_path / "h.csv").write_text(
        "model,id,ts,confidence\n"
        f"m,a,{now - 60},0.7\n"  # row 1
        f"m,b,{now - 60},0.7,extra\n"  # row 2: five fields
        f'm,"c\nc",{now - 60},0.7\n'  # row 3: a newline inside a quoted id, then refused by the API
        "m,d\n"  # row 4: two fields
        f"m,e,{now - 60},1.7\n"  # row 5: read, then refused by the API's rule
        f"m,f,{now - 60},0.7\n"  # row 6
    )
    (tmp_path / "l.csv").write_text(f"model,id,correct,labelled_at\nm,a,1\nm,f,1,{now - 1}\n")
    settings = load_settings(None, database_url=db_url)
    summary = import_history(
        engine, settings, tmp_path / "h.csv", tmp_path / "l.csv", tmp_path / "r.jsonl", chunk_rows=2
    )
    assert (summary.predictions_read, summary.inserted, summary.predictions_rejected) == (6, 2, 4)
    assert (summary.labels_read, summary.matched, summary.labels_rejected) == (2, 1, 1)
    with engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT prediction_id FROM predictions")).scalars()) == ["a", "f"]
    report = [orjson.loads(line) for line in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    by_row = {(r["file"], r["row"]): r for r in report}
    assert sorted(by_row) == [("labels", 1), ("predictions", 2), ("predictions", 3), ("predictions", 4),
                              ("predictions", 5)]  # fmt: skip
    assert by_row[("predictions", 2)]["field"] == "record"
    assert "header's 4 fields (found 5)" in by_row[("predictions", 2)]["error"]
    assert "'m,d'" in by_row[("predictions", 4)]["error"]
    assert by_row[("predictions", 3)]["field"] == "id"  # the API's rule, at its own row number
    assert by_row[("predictions", 5)]["field"] == "confidence"
    assert "found 3" in by_row[("labels", 1)]["error"]


def test_a_csv_of_nothing_but_rows_of_the_wrong_width_stops_at_a_bound(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """Rejected rows are reported as they are read, so memory stays bounded: more unparsable rows in
    a row than a chunk holds stop the import, naming the cause."""
    now = time.time()
    rows = "".join(f"m,x{i},{now - 60},0.7,extra\n" for i in range(50))
    (tmp_path / "h.csv").write_text(f"model,id,ts,confidence\nm,a,{now - 60},0.7\n" + rows)
    settings = load_settings(None, database_url=db_url)
    with pytest.raises(ImportInputError, match="more than 20 rows in a row do not split"):
        import_history(engine, settings, tmp_path / "h.csv", None, tmp_path / "r.jsonl", chunk_rows=20)
