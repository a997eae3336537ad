"""Push the dashboards to a Grafana through its HTTP API (``calmon dashboards push``).

Idempotent: the folder is created once (then only renamed back if someone renamed it), and every
dashboard is saved with ``overwrite`` under its fixed uid, so a second push replaces rather than
duplicates. The token comes from the environment, never from a flag (it would show in ``ps``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, TokenAuth

from monitor.dashboards import FOLDER_TITLE, FOLDER_UID, Json, dashboards

__all__ = [
    "PushError",
    "PushResult",
    "connect",
    "log",
    "push",
]


log = logging.getLogger(__name__)


class PushError(Exception):
    """Grafana refused or could not be reached; the message says which step and why."""


@dataclass(frozen=True)
class PushResult:
    folder_uid: str
    folder_created: bool
    dashboards: list[str]  # the uids saved


def connect(url: str, token: str | None, timeout: float = 10.0) -> GrafanaApi:
    credential = TokenAuth(token) if token else None
    api: GrafanaApi = GrafanaApi.from_url(url, credential=credential, timeout=timeout)
    return api


def _ensure_folder(api: GrafanaApi, uid: str, title: str) -> bool:
    """True when the folder had to be created."""
    try:
        folder: Any = api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(title, uid=uid)
        return True
    if folder.get("title") != title:
        api.folder.update_folder(uid, title=title, overwrite=True)
    return False


def push(
    api: GrafanaApi,
    folder_uid: str = FOLDER_UID,
    folder_title: str = FOLDER_TITLE,
    only: list[str] | None = None,
) -> PushResult:
    """Save every calmon dashboard (or the uids in ``only``) into the folder, overwriting."""
    selected: dict[str, Json] = dashboards()
    if only:
        unknown = sorted(set(only) - set(selected))
        if unknown:
            raise PushError(f"unknown dashboard uid(s) {unknown}; known: {sorted(selected)}")
        selected = {uid: selected[uid] for uid in only}
    step = f"folder {folder_uid!r}"
    try:
        created = _ensure_folder(api, folder_uid, folder_title)
        saved = []
        for uid, dashboard in selected.items():
            step = f"dashboard {uid!r}"
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**dashboard, "id": None},
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "calmon dashboards push",
                }
            )
            saved.append(uid)
            log.info("dashboard saved", extra={"uid": uid, "folder": folder_uid})
    except GrafanaException as exc:
        raise PushError(f"{step}: Grafana answered {exc.status_code}: {exc.message}") from exc
    except OSError as exc:  # connection refused, DNS, TLS: niquests' errors are OSErrors
        raise PushError(f"{step}: cannot reach Grafana: {exc}") from exc
    return PushResult(folder_uid, created, saved)
