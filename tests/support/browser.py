"""A real headless Chromium (Debian's ``chromium``) driven by Playwright, recording what a person's
browser would complain about: console errors, uncaught page errors, failed requests, 4xx/5xx
answers, and any request to a host other than the daemon's.

Playwright only drives the browser; it never downloads one (``executable_path`` is Debian's binary).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tests.support.services import missing_service

__all__ = ["Recorder", "chromium", "launch"]

# Without the networking switches Chromium phones home at start (component updates, sync, QUIC),
# which this machine's closed network refuses: noise, and not what the page under test asked for.
ARGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        missing_service("chromium not found; install Debian's 'chromium' package (apt-get install chromium)")
    assert found is not None
    return found


@dataclass
class Recorder:
    """Everything the browser reported while pages loaded."""

    host: str
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: m.type in ("error", "warning") and self.problems.append(
            f"console {m.type}: {m.text}"))  # fmt: skip
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("request", self._request)
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}"))

    def _request(self, request: Any) -> None:
        self.requests.append(request.url)
        parts = urlsplit(request.url)
        if parts.scheme not in ("data", "about", "blob") and parts.netloc != self.host:
            self.problems.append(f"request to another host: {request.url}")


@contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's ``Browser``), closed afterwards."""
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("playwright not installed; pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
