"""A real Prometheus server on a free loopback port, scraping given targets (tests only)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.support.pgcluster import free_port
from tests.support.polling import eventually
from tests.support.process import terminate, wait_ready

INSTALL_HINT = "install Debian's 'prometheus' package (apt-get install prometheus)"


class Prometheus:
    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        extra_config: str = "",
        scrape_options: str = "",
    ):
        """``extra_config`` goes at the top level; ``scrape_options`` inside the calmon job (indented 4)."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(f"prometheus not found; {INSTALL_HINT}")
        self.root = Path(tempfile.mkdtemp(prefix="calmon-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.root / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {scrape_interval}, evaluation_interval: {scrape_interval}}}\n"
            + extra_config
            + "scrape_configs:\n  - job_name: calmon\n"
            + scrape_options
            + "    static_configs:\n"
            + f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.log = open(self.root / "prometheus.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip
        wait_ready(f"{self.url}/-/ready", self.process, self.root / "prometheus.log", "prometheus")

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {promql}: {body}")
        return list(body["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: float = 2.0) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/api/v1/query_range",
            params={"query": promql, "start": start, "end": end, "step": step},
            timeout=10,
        )
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"range query failed: {promql}: {body}")
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        return eventually(lambda: self.query(promql), timeout, 0.5, f"a result for {promql}")

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
