"""Work that reads rows in one statement and writes them in another, on PostgreSQL next to live
ingest: rows and labels other transactions commit in between are counted once, never marked folded
or deleted without being counted. On SQLite such work holds the write lock: nothing commits
meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from psycopg.errors import SerializationFailure
from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.exc import OperationalError

from monitor.calibration.sketch import MOMENTS, TAIL_BINS, Moment
from monitor.cli import main
from monitor.store import aggregates
from monitor.store.aggregates import aggregate_pending, rebuild
from monitor.store.buckets import upsert_buckets
from monitor.store.engine import create_store_engine
from monitor.store.folding import Batch, Columns
from monitor.store.ingest import apply_feedback, insert_predictions
from monitor.store.migrate import upgrade
from monitor.store.records import FeedbackItem, PredictionRow
from monitor.store.retention import delete_folded_predictions
from monitor.store.schema import fold_queue, sketch_bins
from tests.helpers import fold_states
from tests.store.test_aggregates import BUCKET, FINE, direct, snapshot

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = create_store_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def rows(*ids: int) -> list[PredictionRow]:
    return [
        PredictionRow("m", f"p{i}", "s", 1000.0 + 100.0 * i, "confidence", 0.6, None, None, 0.7, "1")
        for i in ids
    ]


def drain(engine: Engine) -> None:
    """The leader's next ticks."""
    with engine.begin() as conn:
        while aggregate_pending(conn, BUCKET, FINE).rows:
            pass


def equals_the_raw_rows(engine: Engine) -> None:
    stored = snapshot(engine)
    expected = {
        (model, segment, score, bucket, b): sketch.moments[:, b]
        for (model, segment, score, bucket), sketch in direct(engine).items()
        for b in range(sketch.moments.shape[1])
        if sketch.moments[0, b] or sketch.moments[1, b]
    }
    assert stored.keys() == expected.keys()
    for key, moments in expected.items():
        np.testing.assert_allclose(stored[key], moments, rtol=1e-12, atol=1e-12, err_msg=str(key))


def while_rebuilding(monkeypatch: pytest.MonkeyPatch, action: object) -> None:
    """Run ``action`` once, after the rebuild has read its first range of rows and before it marks
    them: the moment another transaction's commit can fall between the two."""
    real = aggregates.fetch_columns
    pending = [action]

    def fetch_then_commit_elsewhere(conn: Connection, batch: Batch) -> Columns:
        columns = real(conn, batch)
        if pending:
            pending.pop()()  # type: ignore[operator]
        return columns

    monkeypatch.setattr(aggregates, "fetch_columns", fetch_then_commit_elsewhere)


def labelling(engine: Engine, pid: str, correct: bool) -> Callable[[], None]:
    """Another transaction labelling ``pid`` and committing (for ``while_rebuilding``)."""

    def label() -> None:
        with engine.begin() as conn:
            apply_feedback(conn, [FeedbackItem("m", pid, correct, None)], now=6000.0)

    return label


def folded_and_one_new(engine: Engine) -> None:
    """p0..p2 folded as predictions (no labels), p3 stored and not folded yet."""
    with engine.begin() as conn:
        insert_predictions(conn, rows(0, 1, 2), now=5000.0)
    drain(engine)
    with engine.begin() as conn:
        insert_predictions(conn, rows(3), now=5000.0)


def test_rows_and_labels_committed_during_a_rebuild_are_counted_once(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = pg_engine
    with engine.begin() as conn:
        insert_predictions(conn, rows(0, 1, 2), now=5000.0)
    drain(engine)  # p0..p2 folded as predictions, no labels yet
    # An ingest transaction takes its pk and has not committed when a later one commits: the
    # rebuild's pk range then covers a row it cannot see yet.
    late = engine.connect()
    late_tx = late.begin()
    insert_predictions(late, rows(10), now=5000.0)
    with engine.begin() as conn:
        insert_predictions(conn, rows(11), now=5000.0)

    def commit_elsewhere() -> None:
        late_tx.commit()  # p10 becomes visible
        with engine.begin() as conn:  # and p1's label arrives
            apply_feedback(conn, [FeedbackItem("m", "p1", True, None)], now=6000.0)

    while_rebuilding(monkeypatch, commit_elsewhere)
    with engine.begin() as conn:
        assert rebuild(conn, BUCKET, FINE) == 4  # p0, p1, p2, p11: the rows it could see
    monkeypatch.undo()
    late.close()
    drain(engine)  # p10 and p1's label, which the rebuild left to the fold
    with engine.connect() as conn:
        states = fold_states(conn)
    assert states == {"p0": 1, "p1": 2, "p2": 1, "p10": 1, "p11": 1}
    equals_the_raw_rows(engine)


def test_a_label_for_a_row_the_rebuild_must_mark_fails_it_whole(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rebuild reads p3 unlabelled and unfolded, then the label commits: marking p3 would claim
    a label it did not count, so the rebuild fails, changes nothing, and says to run it again."""
    engine = pg_engine
    folded_and_one_new(engine)
    before = snapshot(engine)
    while_rebuilding(monkeypatch, labelling(engine, "p3", False))
    with pytest.raises(OperationalError) as failed, engine.begin() as conn:
        rebuild(conn, BUCKET, FINE)
    assert isinstance(failed.value.orig, SerializationFailure)
    assert same_snapshot(snapshot(engine), before)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).where(fold_queue.c.fresh)).scalar() == 1

    # the command says what happened and what to do
    monkeypatch.undo()
    url = engine.url.render_as_string(hide_password=False)
    with engine.begin() as conn:  # another row to mark, and its label arrives mid-rebuild
        insert_predictions(conn, rows(4), now=5000.0)
    while_rebuilding(monkeypatch, labelling(engine, "p4", True))
    assert main(["rebuild-aggregates", "--all", "--attempts", "1", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert "changed while the rebuild ran" in err and "run it again" in err
    monkeypatch.undo()

    # run again: everything counted once
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE)
    drain(engine)
    equals_the_raw_rows(engine)


def test_the_rebuild_command_tries_again_by_itself(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A label for a row the first run must count fails that run; the command's next attempt (its
    default allows three) sees the label and completes: everything counted once."""
    engine = pg_engine
    folded_and_one_new(engine)
    while_rebuilding(monkeypatch, labelling(engine, "p3", True))  # on the first attempt only
    url = engine.url.render_as_string(hide_password=False)
    assert main(["rebuild-aggregates", "--all", "--database-url", url]) == 0
    captured = capsys.readouterr()
    assert "trying again (2 of 3)" in captured.err and "rebuilt sketch buckets from 4" in captured.out
    monkeypatch.undo()
    drain(engine)
    with engine.connect() as conn:
        assert fold_states(conn) == {"p0": 1, "p1": 1, "p2": 1, "p3": 2}
    equals_the_raw_rows(engine)


def same_snapshot(a: dict[tuple[object, ...], np.ndarray], b: dict[tuple[object, ...], np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_retention_keeps_a_row_whose_label_is_being_applied(pg_engine: Engine) -> None:
    """A label transaction holds p0 (labelled, queued for the fold, not committed) while retention
    runs: p0 must stay (its label is answered as applied). Retention deleting it after the label
    committed would lose the label: the delete's re-check of the work list runs in the statement's
    snapshot, taken before the label committed. Retention skips rows another transaction holds."""
    engine = pg_engine
    with engine.begin() as conn:
        insert_predictions(conn, rows(0, 1), now=5000.0)
    drain(engine)  # both folded as predictions, unlabelled: both expired and deletable
    labelling = engine.connect()
    transaction = labelling.begin()
    outcome = apply_feedback(labelling, [FeedbackItem("m", "p0", True, None)], now=6000.0)
    assert outcome.statuses == ["matched"]
    commit_later = threading.Timer(1.0, transaction.commit)  # unblocks a retention that waits for p0
    commit_later.start()
    try:
        with engine.begin() as conn:
            deleted = delete_folded_predictions(conn, before=10_000.0, limit=100)
    finally:
        commit_later.join()
        labelling.close()
    assert deleted == 1
    drain(engine)
    with engine.connect() as conn:
        left = fold_states(conn)
        counted = conn.execute(
            select(func.sum(sketch_bins.c.n_l)).where(sketch_bins.c.score == "raw", sketch_bins.c.bin < FINE)
        ).scalar()
    assert left == {"p0": 2} and counted == 1


def test_a_bucket_another_fold_writes_during_a_rebuild_fails_it_whole(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rebuild merges its sums into the buckets at the end; a bucket row another transaction
    committed meanwhile (a fold that ignored the rebuild) is one the rebuild cannot see: it fails
    with a serialization failure (which the command answers with "run it again"), never a unique
    violation or a double count."""
    engine = pg_engine
    with engine.begin() as conn:
        insert_predictions(conn, rows(0, 1), now=5000.0)  # not folded: no bucket yet

    def fold_elsewhere() -> None:  # a bucket row of a key the rebuild is about to write
        moments = np.zeros((1, len(MOMENTS), FINE + TAIL_BINS))
        moments[0, Moment.N, 71] = 1.0  # p0: raw 0.6, in fine bin 71 of bucket 900
        with engine.begin() as conn:
            upsert_buckets(conn, [("m", "s", 900.0)], "raw", moments)

    while_rebuilding(monkeypatch, fold_elsewhere)
    with pytest.raises(SerializationFailure), engine.begin() as conn:  # the driver's: from the COPY cursor
        rebuild(conn, BUCKET, FINE)
    monkeypatch.undo()
    url = engine.url.render_as_string(hide_password=False)
    while_rebuilding(monkeypatch, fold_elsewhere)
    assert (
        main(["rebuild-aggregates", "--all", "--attempts", "1", "--database-url", url]) == 1
    )  # said, not a traceback
    monkeypatch.undo()
    with engine.begin() as conn:  # the stray row the rogue fold wrote (a real fold marks its rows too)
        conn.execute(delete(sketch_bins))
    with engine.begin() as conn:
        rebuild(conn, BUCKET, FINE)
    equals_the_raw_rows(engine)


def test_a_label_queued_while_a_fold_holds_its_row_is_counted_once(pg_engine: Engine) -> None:
    """The fold has counted p0 without a label and not committed; the label's transaction waits for
    it, then queues the label anew: the next fold counts it."""
    engine = pg_engine
    with engine.begin() as conn:
        insert_predictions(conn, rows(0), now=5000.0)
    folding = engine.connect()
    transaction = folding.begin()
    assert aggregate_pending(folding, BUCKET, FINE).rows == 1
    statuses: list[list[str]] = []

    def label() -> None:
        with engine.begin() as conn:
            statuses.append(apply_feedback(conn, [FeedbackItem("m", "p0", True, None)], now=6000.0).statuses)

    labeller = threading.Thread(target=label)
    labeller.start()
    labeller.join(timeout=0.5)
    assert labeller.is_alive()  # waiting for the fold
    transaction.commit()
    folding.close()
    labeller.join()
    assert statuses == [["matched"]]
    drain(engine)
    with engine.connect() as conn:
        assert fold_states(conn) == {"p0": 2}
    equals_the_raw_rows(engine)


def test_a_fold_skips_a_row_whose_label_is_not_committed_yet(pg_engine: Engine) -> None:
    """A label's transaction holds p0's work-list row until it commits: a fold meanwhile skips p0
    rather than count it without the label it cannot see yet (and take it off the work list)."""
    engine = pg_engine
    with engine.begin() as conn:
        insert_predictions(conn, rows(0, 1), now=5000.0)
    labelling = engine.connect()
    transaction = labelling.begin()
    apply_feedback(labelling, [FeedbackItem("m", "p0", False, None)], now=6000.0)
    with engine.begin() as conn:
        assert aggregate_pending(conn, BUCKET, FINE).rows == 1  # p1 only
    transaction.commit()
    labelling.close()
    drain(engine)
    with engine.connect() as conn:
        assert fold_states(conn) == {"p0": 2, "p1": 1}
    equals_the_raw_rows(engine)
