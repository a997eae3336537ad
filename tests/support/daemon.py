"""Run a real ``calmon serve`` process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.support.pgcluster import free_port
from tests.support.polling import eventually


class DaemonExited(RuntimeError):
    """The daemon process died while the test waited for it."""


class Daemon:
    def __init__(
        self,
        database_url: str,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()  # a port of a killed predecessor: a restart at the same address
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "monitor"]
        if config is not None:
            command += ["--config", str(config)]
        command += [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database-url",
            database_url,
            *extra_args,
        ]
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=self._log, env={**os.environ, **(env or {})}
        )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise DaemonExited(f"calmon exited with {self.process.returncode}: {self.log()}")
            return httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200

        try:
            eventually(healthy, timeout, 0.05, f"calmon healthy at {self.base_url}", fatal=(DaemonExited,))
        except AssertionError as exc:
            raise TimeoutError(f"{exc}: {self.log()}") from exc

    def evaluated_at(self) -> float:
        """When the snapshot this daemon serves was computed (0 before the first evaluation)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        match = re.search(r"^calmon_last_evaluation_timestamp_seconds (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def wait_ticks(self, count: int, timeout: float = 30.0) -> None:
        """Let ``count`` more evaluations be served here (how a test shows nothing happens meanwhile)."""
        seen = [self.evaluated_at()]

        def advanced() -> bool:
            now = self.evaluated_at()
            if now > seen[-1]:
                seen.append(now)
            return len(seen) > count

        eventually(advanced, timeout, 0.1, f"{count} more evaluations on {self.base_url}")

    def log(self, tail: int | None = 4000) -> str:
        if self.log_path and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        return ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]
        return self.process.returncode
