"""Calibrator registry and serving: versions, one active, rollback, ingest and /v1/calibrate, CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.calibration.calibrators import IsotonicCalibration, PlattScaling
from monitor.collector.api import create_app
from monitor.collector.serving import RegistryScorer
from monitor.config import Settings
from monitor.evaluation.snapshot import Snapshot
from monitor.evaluation.windows import WindowStats
from monitor.store import calibrators as store
from monitor.store.engine import create_store_engine
from monitor.store.events import append_event, calibrator_changes, list_events
from monitor.store.migrate import upgrade
from tests.helpers import counts, post_predictions, pred

SHRINK = PlattScaling(a=0.5, b=0.0)  # pulls confidences towards 0.5
ADMIN = "admin-token-0123456789ab"
READER = "reader-token-0123456789ab"


def promote(
    engine: Engine, model: str, segment: str, calibrator: object, now: float = 1.0
) -> store.CalibratorRecord:
    with engine.begin() as conn:
        record = store.create(conn, model, segment, calibrator, now)  # type: ignore[arg-type]
        store.activate(conn, record.id, now, "test promotion")
    return record


def test_rollback_restores_what_served_before_not_the_newest_ever_active(engine: Engine) -> None:
    v1 = promote(engine, "m", "*", SHRINK, now=1.0)
    v2 = promote(engine, "m", "*", PlattScaling(a=0.8, b=0.1), now=2.0)
    with engine.begin() as conn:
        assert store.rollback(conn, v2.id, now=3.0)[1].id == v1.id  # type: ignore[union-attr]
    v3 = promote(engine, "m", "*", PlattScaling(a=0.9, b=0.0), now=4.0)  # replaces v1
    with engine.begin() as conn:
        _, restored = store.rollback(conn, v3.id, now=5.0)
        assert restored is not None and restored.id == v1.id  # v1 served before v3; v2 never came back
        assert store.get(conn, v2.id).status == "retired"  # type: ignore[union-attr]
        promoted = list_events(conn, kind="calibrator_promoted")  # activation writes its own event
        assert [e["calibrator_id"] for e in promoted] == [v3.id, v2.id, v1.id]


def test_versions_activation_and_rollback(engine: Engine) -> None:
    first = promote(engine, "m", "*", SHRINK)
    second = promote(engine, "m", "*", PlattScaling(a=0.8, b=0.1), now=2.0)
    assert (first.version, second.version) == (1, 2)
    with engine.begin() as conn:
        assert store.active(conn, "m", "*").id == second.id  # type: ignore[union-attr]
        assert store.get(conn, first.id).status == "retired"  # type: ignore[union-attr]
        rolled, restored = store.rollback(conn, second.id, now=3.0)
        assert (rolled.status, restored.id, restored.status) == ("retired", first.id, "active")  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="not active"):
            store.rollback(conn, second.id, now=4.0)
        rolled, restored = store.rollback(conn, first.id, now=5.0)
        assert restored is None and store.active(conn, "m", "*") is None  # back to the identity
        with pytest.raises(LookupError):
            store.rollback(conn, 999, now=6.0)
        recorded = list_events(conn, kind="calibrator_rolled_back")  # every rollback leaves its event
        assert [e["calibrator_id"] for e in recorded] == [first.id, second.id]
        rejected = store.create(conn, "m", "*", SHRINK, 7.0, status="rejected", reason="gate failed")
        assert rejected.version == 3 and rejected.status == "rejected"


@pytest.fixture
def served(engine: Engine, make_settings: Callable[..., Settings]) -> tuple[TestClient, RegistryScorer]:
    scorer = RegistryScorer()
    settings = make_settings(
        auth={
            "tokens": [
                {"name": "ops", "token": ADMIN, "scopes": ["admin"]},
                {"name": "dash", "token": READER, "scopes": ["read"]},
            ]
        }
    )
    return TestClient(create_app(settings, engine, scorer=scorer, clock=lambda: 10.0)), scorer


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_ingest_serves_the_active_calibrator_and_rollback_restores_the_previous(
    engine: Engine, served: tuple[TestClient, RegistryScorer]
) -> None:
    client, scorer = served
    first = promote(engine, "m", "*", SHRINK)
    promote(engine, "m", "billing", IsotonicCalibration([0.0, 1.0], [0.2, 0.3]))
    scorer.refresh(engine, now=1.0)
    body = post_predictions(
        client,
        [
            pred("a", 0.9, model="m"),
            pred("b", 0.9, model="m", segment="billing"),
            pred("c", 0.9, model="other"),
        ],
        headers=auth(ADMIN),
    ).json()
    scores = {
        r["id"]: (round(r["calibrated_confidence"], 6), r["calibrator_version"]) for r in body["results"]
    }
    assert scores["a"] == (round(float(SHRINK.transform([0.9])[0]), 6), "1")  # model-wide calibrator
    assert scores["b"] == (0.29, "1")  # the segment's own calibrator wins: 0.2 + 0.9 * (0.3 - 0.2)
    assert scores["c"] == (0.9, "identity")
    second = promote(engine, "m", "*", PlattScaling(a=2.0, b=0.0), now=2.0)
    scorer.refresh(engine, now=2.0)
    assert (
        post_predictions(client, [pred("d", 0.9, model="m")], headers=auth(ADMIN)).json()["results"][0][
            "calibrator_version"
        ]
        == "2"
    )
    assert client.post(f"/v1/calibrators/{second.id}/rollback", headers=auth(READER)).status_code == 403
    response = client.post(f"/v1/calibrators/{second.id}/rollback", headers=auth(ADMIN))
    assert response.status_code == 200 and response.json()["restored"]["id"] == first.id
    result = post_predictions(client, [pred("e", 0.9, model="m")], headers=auth(ADMIN)).json()["results"][0]
    assert result["calibrator_version"] == "1"  # ingest uses the restored version at once on this replica
    assert client.post(f"/v1/calibrators/{second.id}/rollback", headers=auth(ADMIN)).status_code == 409
    assert client.post("/v1/calibrators/9999/rollback", headers=auth(ADMIN)).status_code == 404
    with engine.connect() as conn:
        event = list_events(conn, kind="calibrator_rolled_back")[0]
    assert event["calibrator_id"] == second.id and event["payload"]["restored"]["version"] == "1"
    listed = client.get("/v1/calibrators", params={"model": "m"}, headers=auth(READER)).json()["calibrators"]
    assert {(c["segment"], c["version"], c["status"]) for c in listed} == {
        ("*", "1", "active"),
        ("*", "2", "retired"),
        ("billing", "1", "active"),
    }
    assert client.get(f"/v1/calibrators/{first.id}", headers=auth(READER)).json()["params"] == SHRINK.params()


def test_calibrate_scores_like_ingest_and_writes_nothing(
    engine: Engine, served: tuple[TestClient, RegistryScorer]
) -> None:
    client, scorer = served
    promote(engine, "m", "*", SHRINK)
    scorer.refresh(engine, now=1.0)
    response = client.post(
        "/v1/calibrate",
        headers=auth(ADMIN),
        json={
            "records": [
                {"model": "m", "confidence": 0.9},
                {"model": "m", "probs": [0.2, 0.8]},
                {"model": "m", "confidence": 3},
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert [r["index"] for r in body["results"]] == [0, 1] and body["rejected"][0]["field"] == "confidence"
    assert body["results"][0]["calibrated_confidence"] == pytest.approx(float(SHRINK.transform([0.9])[0]))
    assert (
        body["results"][1]["raw_confidence"] == pytest.approx(0.8)
        and body["results"][1]["calibrator_version"] == "1"
    )
    assert counts(engine)["predictions"] == 0


def test_a_promotion_reaches_another_replica_at_its_refresh(
    engine: Engine, make_settings: Callable[..., Settings]
) -> None:
    replicas = [RegistryScorer(), RegistryScorer()]
    for scorer in replicas:
        scorer.refresh(engine, now=0.0)
    promote(engine, "m", "*", SHRINK)
    assert replicas[1].score("m", "x", [0.9]) == ([0.9], "identity")  # not yet refreshed
    replicas[1].refresh(engine, now=10.0)  # what its calibrators-refresh job does every interval
    assert replicas[1].score("m", "x", [0.9])[1] == "1"


def test_cli_lists_shows_and_rolls_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = create_store_engine(url)
    upgrade(engine)
    first = promote(engine, "m", "*", SHRINK)
    second = promote(engine, "m", "*", PlattScaling(a=0.9, b=0.0), now=2.0)
    engine.dispose()

    def calmon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "monitor", "calibrators", *args, "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = calmon("list")
    assert listed.returncode == 0 and "v2  platt       active" in listed.stdout and "retired" in listed.stdout
    assert '"method": "platt"' in calmon("show", str(first.id)).stdout
    rolled = calmon("rollback", str(second.id))
    assert rolled.returncode == 0 and "now serving version 1" in rolled.stdout
    assert calmon("rollback", str(second.id)).returncode == 1
    assert calmon("show").returncode == 2


def test_calibrator_changes_are_the_latest_promotion_or_rollback_per_series(engine: Engine) -> None:
    with engine.begin() as conn:
        append_event(conn, "calibrator_promoted", 100.0, {}, "qa", "*")
        append_event(conn, "calibrator_rolled_back", 250.0, {}, "qa", "*")
        append_event(conn, "calibrator_promoted", 180.0, {}, "qa", "billing")
        append_event(conn, "calibrator_rejected", 900.0, {}, "qa", "billing")  # nothing changed
        append_event(conn, "drift_detected", 950.0, {}, "chat", "*")
    with engine.connect() as conn:
        assert calibrator_changes(conn) == {("qa", "*"): 250.0, ("qa", "billing"): 180.0}


def test_followers_restore_the_whole_snapshot_including_drift_flags() -> None:
    stats = WindowStats("qa", "*", "1h", "calibrated", 10, 10, 0, 1.0, ece=0.1, calibrator_changed=True)
    snapshot = Snapshot(
        5.0,
        [stats],
        [{"model": "qa", "segment": "*", "version": "2", "method": "isotonic"}],
        [{"model": "qa", "segment": "*", "kind": "calibration", "active": True}],
    )
    restored = Snapshot.from_dict(orjson.loads(orjson.dumps(snapshot.as_dict())))
    assert restored == snapshot
