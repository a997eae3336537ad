"""The real daemon: start, serve, SIGTERM shutdown, and a PostgreSQL outage it survives by itself."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from monitor.store.engine import create_store_engine
from monitor.store.schema import predictions
from tests.support import pgcluster
from tests.support.daemon import Daemon
from tests.support.polling import eventually, holds
from tests.support.services import missing_service


def body(ids: range, prefix: str = "p") -> dict[str, object]:
    return {"predictions": [{"model": "m", "id": f"{prefix}{i}", "confidence": 0.7} for i in ids]}


def test_serve_migrates_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    daemon = Daemon(f"sqlite:///{tmp_path / 'c.db'}", log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        assert httpx.get(f"{daemon.base_url}/readyz").json()["status"] == "ready"
        response = httpx.post(f"{daemon.base_url}/v1/predictions", json=body(range(10)))
        assert response.status_code == 200 and response.json()["accepted"] == 10
    finally:
        code = daemon.stop()
    assert code == 0
    log = daemon.log(tail=None)
    assert '"msg":"calmon starting"' in log and '"msg":"calmon stopped"' in log
    engine = create_store_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar_one() == 10
    engine.dispose()


@pytest.fixture
def own_cluster() -> Iterator[pgcluster.PgCluster]:
    """A cluster of this test's own: it is stopped and restarted under the daemon."""
    try:
        cluster = pgcluster.start_cluster()
    except RuntimeError as exc:
        missing_service(str(exc))
    yield cluster
    cluster.destroy()


def test_database_outage_gives_503_then_recovers_without_restart(
    own_cluster: pgcluster.PgCluster, tmp_path: Path
) -> None:
    daemon = Daemon(own_cluster.url(), log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        url = daemon.base_url
        assert httpx.post(f"{url}/v1/predictions", json=body(range(5))).status_code == 200

        own_cluster.stop("fast")
        down = httpx.post(f"{url}/v1/predictions", json=body(range(5, 10)), timeout=30)
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "5"
        assert (
            httpx.post(
                f"{url}/v1/feedback",
                json={"feedback": [{"model": "m", "id": "p1", "correct": True}]},
                timeout=30,
            ).status_code
            == 503
        )
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200  # the process itself is fine

        own_cluster.start()

        def accepted() -> httpx.Response | None:
            response = httpx.post(f"{url}/v1/predictions", json=body(range(5, 10)), timeout=30)
            return response if response.status_code == 200 else None

        up = eventually(accepted, 30, 0.2, "ingest to recover")
        assert up.json()["accepted"] == 5
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert daemon.process.poll() is None  # never restarted
    finally:
        daemon.stop()
    engine = create_store_engine(own_cluster.url())
    with engine.connect() as conn:
        # the 503'd batch was not half-written: exactly the acknowledged 10 are there
        assert conn.execute(select(func.count()).select_from(predictions)).scalar_one() == 10
    engine.dispose()


def test_a_frozen_database_gives_a_timely_503_recovers_and_loses_nothing(
    own_cluster: pgcluster.PgCluster, tmp_path: Path
) -> None:
    config = tmp_path / "calmon.yaml"
    config.write_text(  # the default timeouts; a small pool so a few stuck requests exhaust it
        "evaluation: {interval_seconds: 1}\nshutdown_grace_seconds: 5\nlogging: {access_log: false}\n"
        "database: {pool_size: 2, max_overflow: 1}\n"
    )
    daemon = Daemon(own_cluster.url(), config=config, log_path=tmp_path / "daemon.log")
    acknowledged: set[str] = set()
    try:
        daemon.wait_healthy()
        url = daemon.base_url

        def ingest(batch: range, prefix: str) -> httpx.Response:
            response = httpx.post(f"{url}/v1/predictions", json=body(batch, prefix), timeout=30)
            if response.status_code == 200:
                acknowledged.update(f"{prefix}{i}" for i in batch)
            return response

        assert ingest(range(20), "before").status_code == 200
        own_cluster.freeze()
        try:
            for attempt in range(5):  # more than the pool holds: later ones wait for a connection
                started = time.monotonic()
                answer = ingest(range(attempt * 10, attempt * 10 + 10), "frozen")
                assert answer.status_code == 503 and answer.headers["retry-after"] == "5", answer.text
                assert time.monotonic() - started < 5.0
            started = time.monotonic()
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503
            assert time.monotonic() - started < 5.0
            assert httpx.get(f"{url}/healthz").status_code == 200
        finally:
            own_cluster.thaw()
        eventually(lambda: ingest(range(10), "after").status_code == 200, 30, 0.2, "ingest to recover")
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert daemon.process.poll() is None  # recovered by itself

        own_cluster.freeze()  # now stop the daemon while its jobs are stuck on the frozen server
        try:

            def evaluations_stalled() -> bool:
                before = daemon.evaluated_at()

                def unchanged() -> None:
                    assert daemon.evaluated_at() == before

                return holds(unchanged, 2.0, 0.5) > 0  # no tick completes: one is stuck mid-evaluation

            eventually(evaluations_stalled, 15, 0.1, "the evaluation to be stuck on the frozen server")
            stopping = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            code = daemon.process.wait(30)
            assert time.monotonic() - stopping < 5 + 5  # shutdown_grace_seconds and slack
            assert code == 0
        finally:
            own_cluster.thaw()
    finally:
        daemon.stop()
    engine = create_store_engine(own_cluster.url())
    with engine.connect() as conn:
        stored = {pid for (pid,) in conn.execute(select(predictions.c.prediction_id))}
    engine.dispose()
    assert acknowledged <= stored  # every acknowledged prediction is there (a 503'd one may be too)


def test_acknowledged_batches_survive_a_kill_9(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    daemon = Daemon(url, log_path=tmp_path / "daemon.log")
    try:
        daemon.wait_healthy()
        for start in range(0, 3000, 1000):
            assert (
                httpx.post(
                    f"{daemon.base_url}/v1/predictions", json=body(range(start, start + 1000))
                ).status_code
                == 200
            )
        assert (
            httpx.post(
                f"{daemon.base_url}/v1/feedback",
                json={"feedback": [{"model": "m", "id": f"p{i}", "correct": True} for i in range(500)]},
            ).status_code
            == 200
        )
    finally:
        daemon.process.kill()  # no graceful shutdown, no checkpoint
        daemon.process.wait()
        daemon.stop()
    engine = create_store_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(predictions)).scalar_one() == 3000
        labelled = select(func.count()).select_from(predictions).where(predictions.c.correct.is_not(None))
        assert conn.execute(labelled).scalar_one() == 500
    engine.dispose()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_port_in_use_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    database = tmp_path / "never.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = run_cli(
            "serve", "--host", "127.0.0.1", "--port", port, "--database-url", f"sqlite:///{database}"
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on 127.0.0.1:" in lines[0] and "--port" in lines[0], (
        result.stderr
    )
    assert not database.exists()  # no migration ran, no lease was taken


def test_an_unreachable_database_is_one_line_naming_the_setting() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql+psycopg://calmon:secret@127.0.0.1:{dead}/calmon"
    for args in (["serve", "--port", "0"], ["db", "upgrade"], ["rebuild-aggregates"]):
        result = run_cli(*args, "--database-url", url)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "cannot reach the database" in lines[0] and "database_url" in lines[0]
        assert "secret" not in lines[0]  # the password is masked
