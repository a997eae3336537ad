"""Migrations produce exactly the declared schema, on both backends, and constraints hold."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from monitor.cli import main
from monitor.store.migrate import SchemaError, current_revision, head_revision, upgrade
from monitor.store.schema import calibrators, metadata


def test_migrations_match_declared_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_at_most_one_active_calibrator_per_model_segment(engine: Engine) -> None:
    row = {"model": "m", "segment": "default", "method": "platt", "params": "{}", "created_at": 0.0}
    with engine.begin() as conn:
        conn.execute(
            insert(calibrators),
            [{**row, "version": 1, "status": "active"}, {**row, "version": 2, "status": "retired"}],
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(calibrators), [{**row, "version": 3, "status": "active"}])
    with engine.begin() as conn:  # another segment may have its own active one
        conn.execute(insert(calibrators), [{**row, "segment": "billing", "version": 1, "status": "active"}])


def test_a_schema_newer_than_the_release_is_refused_with_a_clear_message(
    engine: Engine, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rolling calmon back past a migration must not start on (or 'upgrade') a schema it doesn't know."""
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(SchemaError, match=r"'0099_future'.*does not know"):
        upgrade(engine)
    assert main(["db", "upgrade", "--database-url", db_url]) == 2
    assert "restore a backup" in capsys.readouterr().err
    assert current_revision(engine) == "0099_future"  # untouched


def test_the_totals_migration_counts_the_buckets_already_folded(db_url: str) -> None:
    """Upgrading a store folded before ``series_totals`` existed: the model endpoints keep counting
    what its buckets hold (raw score only; the calibrated rows are the same predictions)."""
    from monitor.store.engine import create_store_engine
    from monitor.store.schema import series_totals, sketch_bins

    engine = create_store_engine(db_url)
    try:
        with engine.begin() as conn:  # PostgreSQL test databases come migrated: start from nothing
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        upgrade(engine, "0009")
        zeros = {m: 0.0 for m in ("s2", "s3", "s4", "syp", "sll")}
        rows = [
            {"model": "m", "segment": "a", "score": score, "bucket_start": start, "bin": b,
             "n": n, "sum_p": 0.5 * n, "n_l": n_l, "s1": 0.4 * n_l, "sy": sy, **zeros}
            for score in ("raw", "calibrated")
            for start, b, n, n_l, sy in ((600.0, 3, 4.0, 2.0, 1.0), (900.0, 7, 6.0, 6.0, 5.0))
        ]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(sketch_bins), rows)
        upgrade(engine)
        with engine.connect() as conn:
            (found,) = conn.execute(select(series_totals)).all()
    finally:
        engine.dispose()
    assert found.model == "m" and found.segment == "a"
    assert (found.predictions, found.labelled, found.correct) == (10.0, 8.0, 6.0)
    assert found.confidence_sum_labelled == pytest.approx(3.2)
    assert (found.first_ts, found.last_ts) == (600.0, 900.0)


def test_the_work_list_migration_carries_the_fold_state_both_ways(db_url: str) -> None:
    """0012 moves the fold state out of the prediction rows: state 0 becomes a fresh work-list row,
    state 1 with a label a label-only one, the rest nothing; its downgrade puts the states back."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import MIGRATIONS

    engine = create_store_engine(db_url)
    states = {"new": (0, None), "new-labelled": (0, True), "counted": (1, None), "label-queued": (1, False),
              "all-counted": (2, True)}  # fmt: skip
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        upgrade(engine, "0011")
        with engine.begin() as conn:
            for pid, (state, correct) in states.items():
                conn.execute(
                    text(
                        "INSERT INTO predictions (model, prediction_id, segment, ts, received_at, "
                        "input_kind, raw_confidence, calibrated_confidence, calibrator_version, correct, "
                        "agg_state) "
                        "VALUES ('m', :pid, 's', 1.0, 1.0, 'confidence', 0.5, 0.5, 'x', :correct, :state)"
                    ),
                    {"pid": pid, "correct": correct, "state": state},
                )
        upgrade(engine)
        with engine.connect() as conn:
            queued = dict(
                conn.execute(
                    text(
                        "SELECT p.prediction_id, q.fresh FROM fold_queue q JOIN predictions p ON p.pk = q.pk"
                    )
                ).all()
            )
        assert queued == {"new": True, "new-labelled": True, "label-queued": False}
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0011")
        with engine.connect() as conn:
            back = dict(conn.execute(text("SELECT prediction_id, agg_state FROM predictions")).all())
        assert back == {pid: state for pid, (state, _) in states.items()}
    finally:
        engine.dispose()


def test_the_series_index_migration_swaps_ts_for_arrival_and_back(db_url: str) -> None:
    """0013 replaces the (model, segment, ts) index with (segment, model, pk); its downgrade restores it."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from monitor.store.engine import create_store_engine
    from monitor.store.migrate import MIGRATIONS

    def series_indexes() -> dict[str, list[str | None]]:
        with engine.connect() as conn:
            found = inspect(conn).get_indexes("predictions")
        return {ix["name"]: ix["column_names"] for ix in found if ix["name"] and "segment" in ix["name"]}

    engine = create_store_engine(db_url)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        upgrade(engine, "0012")
        assert series_indexes() == {"ix_predictions_model_segment_ts": ["model", "segment", "ts"]}
        upgrade(engine)
        assert series_indexes() == {"ix_predictions_segment_model_pk": ["segment", "model", "pk"]}
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0012")
        assert series_indexes() == {"ix_predictions_model_segment_ts": ["model", "segment", "ts"]}
    finally:
        engine.dispose()
