"""A real Alertmanager (Debian's prometheus-alertmanager) on a free loopback port (tests only)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.pgcluster import free_port
from tests.support.process import terminate, wait_ready

INSTALL_HINT = "install Debian's 'prometheus-alertmanager' package (apt-get install prometheus-alertmanager)"


def binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class Alertmanager:
    def __init__(self, config: dict[str, Any]):
        found = binary()
        if found is None:
            raise RuntimeError(f"alertmanager not found; {INSTALL_HINT}")
        self.root = Path(tempfile.mkdtemp(prefix="calmon-am-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.root / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.root / "alertmanager.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [found, f"--config.file={self.root / 'alertmanager.yml'}", f"--storage.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip
        try:
            wait_ready(f"{self.url}/-/ready", self.process, self.root / "alertmanager.log", "alertmanager")
        except TimeoutError:
            self.stop()
            raise

    def alerts(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/api/v2/alerts", timeout=5).json())

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
