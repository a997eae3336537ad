"""``calmon dashboards push`` against a recording Grafana stand-in (no Grafana server runs here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from monitor import dashboards as builder
from monitor.cli import main
from monitor.grafana import PushError, connect, push
from tests.support.grafana_standin import GrafanaStandIn
from tests.support.pgcluster import free_port

TOKEN = "glsa_test_token"


@pytest.fixture
def grafana() -> Iterator[GrafanaStandIn]:
    stand_in = GrafanaStandIn(TOKEN)
    yield stand_in
    stand_in.stop()


def test_push_creates_the_folder_and_every_dashboard(grafana: GrafanaStandIn) -> None:
    result = push(connect(grafana.url, TOKEN))
    assert result.folder_created and result.folder_uid == "calmon"
    assert sorted(result.dashboards) == sorted(builder.dashboards())
    assert grafana.folders["calmon"]["title"] == "calmon"
    for uid, expected in builder.dashboards().items():
        saved = grafana.dashboards[uid]
        assert saved["folderUid"] == "calmon" and saved["version"] == 1
        assert saved["dashboard"]["panels"] == expected["panels"] and saved["dashboard"]["id"] is None
    saves = [r for r in grafana.requests if r["path"] == "/api/dashboards/db"]
    assert all(r["body"]["overwrite"] is True for r in saves)
    assert {r["auth"] for r in grafana.requests} == {f"Bearer {TOKEN}"}


def test_a_second_push_overwrites_instead_of_duplicating(grafana: GrafanaStandIn) -> None:
    api = connect(grafana.url, TOKEN)
    push(api)
    grafana.folders["calmon"]["title"] = "renamed by someone"
    second = push(api)
    assert not second.folder_created
    assert grafana.folders["calmon"]["title"] == "calmon"  # put back
    assert len(grafana.dashboards) == 3
    assert {d["version"] for d in grafana.dashboards.values()} == {2}
    creations = [r for r in grafana.requests if r["method"] == "POST" and r["path"] == "/api/folders"]
    assert len(creations) == 1


def test_push_only_some_and_unknown_uid(grafana: GrafanaStandIn) -> None:
    result = push(connect(grafana.url, TOKEN), only=["calmon-model"])
    assert result.dashboards == ["calmon-model"] and set(grafana.dashboards) == {"calmon-model"}
    with pytest.raises(PushError, match="unknown dashboard uid"):
        push(connect(grafana.url, TOKEN), only=["nope"])


def test_a_wrong_token_is_reported_with_the_step(grafana: GrafanaStandIn) -> None:
    with pytest.raises(PushError, match=r"folder 'calmon': Grafana answered 401"):
        push(connect(grafana.url, "wrong"))
    assert grafana.dashboards == {}


def test_an_unreachable_grafana_is_reported() -> None:
    with pytest.raises(PushError, match="cannot reach Grafana"):
        push(connect(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2))


def test_cli_push_takes_the_token_from_the_environment(
    grafana: GrafanaStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", grafana.url]) == 2
    assert "GRAFANA_TOKEN is empty" in capsys.readouterr().err
    monkeypatch.setenv("CALMON_GRAFANA_TOKEN", TOKEN)
    assert main(["dashboards", "push", "--url", grafana.url, "--token-env", "CALMON_GRAFANA_TOKEN"]) == 0
    assert (
        "pushed calmon-overview, calmon-model, calmon-service to created folder 'calmon'"
        in capsys.readouterr().out
    )
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    assert main(["dashboards", "push", "--url", grafana.url]) == 1
    assert "401" in capsys.readouterr().err
    assert TOKEN not in str([r for r in grafana.requests if r["auth"] != f"Bearer {TOKEN}"])
