"""Start-up and shut-down of the real service binaries the tests run (Prometheus, Alertmanager)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.support.polling import eventually


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 30.0
) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process dies or time runs out."""

    def ready() -> bool:
        if process.poll() is not None:
            raise ProcessLookupError(f"{what} exited with {process.returncode}")
        return httpx.get(url, timeout=1).status_code == 200

    try:
        eventually(ready, timeout, 0.1, f"{what} ready at {url}", fatal=(ProcessLookupError,))
    except (AssertionError, ProcessLookupError) as exc:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        terminate(process)
        raise TimeoutError(f"{exc}: {tail}") from exc


def terminate(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
