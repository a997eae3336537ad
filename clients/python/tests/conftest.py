"""A scripted HTTP server on loopback, standing in for calmon where a test needs calmon to misbehave
on cue (503 with Retry-After, 413, a slow answer). Tests against a real calmon daemon live in the
main suite (tests/e2e/test_client_daemon.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    query: dict[str, list[str]] = field(default_factory=dict)


Answer = tuple[int, dict[str, str], Any]


def advised(request: Seen, result: dict[str, Any]) -> dict[str, Any]:
    """With ?target=, calmon's advice: accept at or above 0.7."""
    if "target" in request.query:
        action = "accept" if result["calibrated_confidence"] >= 0.7 else "review"
        result |= {"action": action, "threshold": 0.7, "advice_window": "24h", "advice_reason": None}
    return result


def calmon_like(request: Seen) -> Answer:
    """What calmon answers to a well-formed batch (every record new; calibrated = raw * 0.9)."""
    if request.path == "/v1/predictions":
        records = request.body["predictions"]
        results = [
            advised(
                request,
                {
                    "index": i,
                    "id": r["id"],
                    "calibrated_confidence": r.get("confidence", 0.5) * 0.9,
                    "calibrator_version": "3",
                    "duplicate": False,
                },
            )
            for i, r in enumerate(records)
        ]
        return (
            200,
            {},
            {
                "accepted": len(records),
                "duplicates": 0,
                "labelled_from_pending": 0,
                "rejected": [],
                "results": results,
            },
        )
    if request.path == "/v1/feedback":
        n = len(request.body["feedback"])
        return 200, {}, {"matched": n, "pending": 0, "duplicates": 0, "conflicts": 0, "rejected": []}
    if request.path == "/v1/calibrate":
        r = request.body["records"][0]
        result = {
            "index": 0,
            "raw_confidence": r["confidence"],
            "calibrated_confidence": r["confidence"] * 0.9,
            "calibrator_version": "3",
        }
        return 200, {}, {"results": [advised(request, result)], "rejected": []}
    return 404, {}, {"error": "not found"}


@dataclass
class ScriptedStandin:
    """Answers with ``script`` (default: ``calmon_like``) and records every request."""

    script: Callable[[Seen], Answer] = calmon_like
    seen: list[Seen] = field(default_factory=list)
    delay: float = 0.0

    def start(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                url = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Seen(url.path, headers, body, time.monotonic(), parse_qs(url.query))
                standin.seen.append(request)
                if standin.delay:
                    time.sleep(standin.delay)
                status, headers, answer = standin.script(request)
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def records(self, path: str = "/v1/predictions") -> list[dict[str, Any]]:
        key = {"/v1/predictions": "predictions", "/v1/feedback": "feedback"}[path]
        return [r for s in self.seen if s.path == path for r in s.body[key]]


@pytest.fixture
def standin() -> Iterator[ScriptedStandin]:
    server = ScriptedStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on (bound then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
