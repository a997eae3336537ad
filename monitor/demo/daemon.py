"""A throwaway ``calmon serve`` for the demo: its own SQLite file, a free loopback port, and a
configuration whose windows and timings are scaled to the demo's speed."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["DemoDaemon", "demo_config", "duration_name"]


def duration_name(seconds: int) -> str:
    """``120`` -> ``2m``: the largest unit that divides it (calmon's window names)."""
    for suffix, unit in (("h", 3600), ("m", 60)):
        if seconds % unit == 0:
            return f"{seconds // unit}{suffix}"
    return f"{seconds}s"


def demo_config(speed: float) -> tuple[str, str, str]:
    """The daemon's YAML, and its short and long window names.

    The short window holds 90 s of traffic at --speed 1 (so a drift shows within a minute and a
    promotion's effect within two); everything is that much faster at a higher speed.
    """
    short = duration_name(max(10, round(90 / speed)))
    long = duration_name(max(60, round(1800 / speed)))
    bucket = max(1, round(5 / speed))
    cooldown = max(10, round(60 / speed))  # a refused candidate is tried again within the story
    config = f"""# written by `calmon demo`: windows and timings scaled for a demo at --speed {speed:g}
evaluation:
  {{interval_seconds: 1, windows: [{short}, {long}], bucket_seconds: {bucket}, bootstrap_draws: 100}}
drift: {{min_labelled: 200, cooldown_seconds: {cooldown}}}
recalibration: {{min_rows: 500, max_rows: 5000, serving_refresh_seconds: 1, bootstrap_draws: 200}}
scheduler: {{lease_ttl_seconds: 3, recalibration_poll_seconds: 0.5}}
logging: {{access_log: false, format: text}}
"""
    return config, short, long


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DemoDaemon:
    def __init__(self, workdir: Path, speed: float, database_url: str | None = None, port: int | None = None):
        config, self.short_window, self.long_window = demo_config(speed)
        self.config_path = workdir / "calmon-demo.yaml"
        self.config_path.write_text(config)
        self.log_path = workdir / "calmon-demo.log"
        self.database_url = database_url or f"sqlite:///{workdir / 'calmon-demo.db'}"
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable,
            "-m",
            "monitor",
            "--config",
            str(self.config_path),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
        ]
        with open(self.log_path, "ab") as log:
            # its own session: a Ctrl-C in the terminal reaches the demo, which stops the daemon in order
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"calmon exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"calmon did not become healthy within {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
