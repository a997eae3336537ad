"""A recording stand-in for the few Grafana HTTP API routes ``calmon dashboards push`` uses.

No Grafana server can run on this machine, so this is a mock and says so in its name. It keeps
folders and dashboards by uid like Grafana does (version bumps on overwrite, 412 when a dashboard
with that uid exists and ``overwrite`` is false) and records every request with its headers.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.pgcluster import free_port


class GrafanaStandIn:
    def __init__(self, token: str):
        self.token = token
        self.requests: list[dict[str, Any]] = []
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> Any:
                length = int(self.headers.get("content-length", "0"))
                return json.loads(self.rfile.read(length)) if length else None

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                stand_in.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "auth": self.headers.get("authorization"),
                        "body": body,
                    }
                )
                if self.headers.get("authorization") != f"Bearer {stand_in.token}":
                    return self._answer(401, {"message": "Unauthorized"})
                status, answer = stand_in.route(method, self.path, body)
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and (m := re.fullmatch(r"/api/folders/([^/?]+)", path)):
            folder = self.folders.get(m.group(1))
            return (200, folder) if folder else (404, {"message": "folder not found"})
        if method == "POST" and path == "/api/folders":
            if body.get("uid") in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            folder = {"uid": body["uid"], "title": body["title"], "version": 1}
            self.folders[body["uid"]] = folder
            return 200, folder
        if method == "PUT" and (m := re.fullmatch(r"/api/folders/([^/?]+)", path)):
            folder = self.folders[m.group(1)]
            folder.update(title=body["title"], version=folder["version"] + 1)
            return 200, folder
        if method == "POST" and path == "/api/dashboards/db":
            dashboard = body["dashboard"]
            uid = dashboard["uid"]
            if body.get("folderUid") not in self.folders:
                return 400, {"message": "folder not found"}
            existing = self.dashboards.get(uid)
            if existing and not body.get("overwrite"):
                return 412, {
                    "message": "A dashboard with the same uid already exists",
                    "status": "name-exists",
                }
            version = existing["version"] + 1 if existing else 1
            self.dashboards[uid] = {
                "dashboard": dashboard,
                "folderUid": body["folderUid"],
                "version": version,
            }
            return 200, {"status": "success", "uid": uid, "version": version, "url": f"/d/{uid}"}
        return 404, {"message": f"no route {method} {path}"}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
