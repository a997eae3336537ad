"""The demo's story: healthy traffic, a drift, the alarm, the refit, the recovery; narrated.

Traffic goes through the client package (``calmon_client.Client``), exactly as an app would send it:
predictions as they happen, labels later. ``--speed`` multiplies the traffic rate and divides every
delay, window and phase, so the same story takes ``1/speed`` of the time.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from monitor.config import parse_duration
from monitor.demo.daemon import DemoDaemon
from monitor.demo.traffic import DRIFTING, SERIES, Traffic
from monitor.demo.watch import Milestone, Watcher, metric_lines

__all__ = ["DemoOptions", "run_demo"]

STEP = 0.05  # seconds between traffic slices
WARMUP = 30.0  # healthy seconds at --speed 1 before the drift
MILESTONES = ("alarm", "promoted", "recovered")


@dataclass(frozen=True)
class DemoOptions:
    speed: float = 1.0
    duration: float = 300.0  # seconds at --speed 1: give up on the story after this
    seed: int = 0
    url: str | None = None  # target this daemon instead of starting one
    token: str | None = None
    database_url: str | None = None
    port: int | None = None
    stay: bool = True  # keep the started daemon (and traffic) running after the story, until Ctrl-C
    window: str | None = None  # the targeted daemon's window to watch (default: its shortest)


class Narrator:
    def __init__(self, out: TextIO, started: float):
        self.out = out
        self.started = started

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed // 60):2d}:{int(elapsed % 60):02d}] {text}", file=self.out, flush=True)


class Stream:
    """Predictions at each series' rate; labels held back until their delay has passed."""

    def __init__(self, client: Any, traffic: Traffic, speed: float):
        self.client = client
        self.traffic = traffic
        self.speed = speed
        self.owed = {s: 0.0 for s in SERIES}
        self.labels: list[tuple[float, int, Any]] = []  # (due, order, prediction)
        self.sent = self.labelled = 0

    def advance(self, seconds: float, drifted: bool) -> None:
        now = time.monotonic()
        for series in SERIES:
            self.owed[series] += series.rate * self.speed * seconds
            while self.owed[series] >= 1.0:
                self.owed[series] -= 1.0
                drift = drifted and (series.model, series.segment) == DRIFTING
                prediction = self.traffic.next(series, drift)
                self.client.log_prediction(
                    prediction.model, prediction.id, segment=prediction.segment, **prediction.scores
                )
                self.sent += 1
                if prediction.feedback is not None:
                    due = now + self.traffic.label_delay(self.speed)
                    heapq.heappush(self.labels, (due, self.sent, prediction))
        while self.labels and self.labels[0][0] <= now:
            _, _, prediction = heapq.heappop(self.labels)
            self.client.log_feedback(prediction.model, prediction.id, **prediction.feedback)
            self.labelled += 1


def _shortest_window(http: httpx.Client) -> str:
    response = http.get(f"/v1/models/{DRIFTING[0]}")
    windows = (
        {w["window"] for w in response.json().get("windows", [])} if response.status_code == 200 else set()
    )
    if not windows:
        return "1h"
    return str(min(windows, key=parse_duration))


def _story(options: DemoOptions, url: str, window: str, say: Callable[[str], None]) -> set[str]:
    """Run the traffic and watch; the milestones seen."""
    from calmon_client import Client

    speed = options.speed
    http = httpx.Client(
        base_url=url,
        timeout=10.0,
        headers={"authorization": f"Bearer {options.token}"} if options.token else {},
    )
    client = Client(url, options.token, flush_interval=0.2)
    watcher = Watcher(http, DRIFTING[0], DRIFTING[1], window)
    stream = Stream(client, Traffic(options.seed, secrets.token_hex(3)), speed)
    model, segment = DRIFTING
    rates = ", ".join(f"{s.model}/{s.segment}" for s in SERIES)
    say(
        f"phase 1: healthy traffic at {sum(s.rate for s in SERIES) * speed:.0f} predictions/s ({rates}); "
        f"labels arrive {5 / speed:g}-{25 / speed:g} s late"
    )
    say(f"         status page {url}/   metrics {url}/metrics")
    started = last_poll = last_status = time.monotonic()
    drift_at, give_up = started + WARMUP / speed, started + options.duration / speed
    drifted = False
    try:
        while time.monotonic() < give_up and not all(m in watcher.seen for m in MILESTONES):
            time.sleep(STEP)
            now = time.monotonic()
            if not drifted and now >= drift_at:
                drifted = True
                say(
                    f"phase 2: {model}/{segment} turns overconfident (claims sigmoid(2.5*logit(q)) when "
                    f"right with probability q); the other series stay honest"
                )
            stream.advance(STEP, drifted)
            if now - last_poll >= 1.0:
                last_poll = now
                for milestone in watcher.poll():
                    _announce(milestone, url, say)
            if now - last_status >= max(2.0, 15.0 / speed):
                last_status = now
                ece = watcher.ece()
                say(
                    f"         sent {stream.sent:,} predictions, {stream.labelled:,} labels; "
                    f"{model}/{segment} ECE over {window}: raw {_fmt(ece['raw'])}, "
                    f"calibrated {_fmt(ece['calibrated'])}"
                    f"{' (window mixes two calibrators)' if ece['mixed'] else ''}"
                )
        client.flush(10)
        if all(m in watcher.seen for m in MILESTONES):
            _show_metrics(http, window, say)
            _inline_example(client, say)
            if options.stay:
                say(f"the story is told; traffic goes on so you can look around: {url}/  (Ctrl-C stops)")
                try:
                    while True:
                        time.sleep(STEP)
                        stream.advance(STEP, drifted)
                except KeyboardInterrupt:
                    pass
    finally:
        client.close(5.0)
        http.close()
    return watcher.seen


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _announce(milestone: Milestone, url: str, say: Callable[[str], None]) -> None:
    say(f"==> {milestone.text}")
    if milestone.link:
        say(f"    look: {url}{milestone.link}")


def _show_metrics(http: httpx.Client, window: str, say: Callable[[str], None]) -> None:
    text = http.get("/metrics").text
    lines = metric_lines(text, DRIFTING[0], DRIFTING[1], window)
    say("in /metrics (what Prometheus scrapes):")
    for line in lines[:6]:
        say(f"    {line}")
    calibrators = http.get("/v1/calibrators").json()["calibrators"]
    serving = [
        f"{c['model']}/{c['segment']} {c['method']} v{c['version']}"
        for c in calibrators
        if c["status"] == "active"
    ]
    say(
        f"serving calibrators: {', '.join(serving) or 'none'}; "
        "every other series is served as sent (identity)"
    )


def _inline_example(client: Any, say: Callable[[str], None]) -> None:
    """The pattern an app uses on its request path: act on the calibrated confidence."""
    model, segment = DRIFTING
    answer = client.calibrate(model, confidence=0.95, segment=segment)
    action = "accept" if answer.confidence >= 0.9 else "send to human review"
    say(
        f"an app asking inline (client.calibrate): {model}/{segment} claims 0.950, calmon says "
        f"{answer.confidence:.3f} (calibrator {answer.calibrator_version}) -> {action} at a 0.90 threshold"
    )


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """0 when the story completed (alarm, promotion, recovery); 1 otherwise, saying what was missing."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the story
    narrator = Narrator(out, time.monotonic())
    say = narrator.say
    daemon: DemoDaemon | None = None
    workdir = tempfile.TemporaryDirectory(prefix="calmon-demo-") if options.url is None else None
    try:
        if options.url is None:
            assert workdir is not None
            daemon = DemoDaemon(Path(workdir.name), options.speed, options.database_url, options.port)
            say(f"starting calmon at {daemon.url} (database {daemon.database_url}, log {daemon.log_path})")
            daemon.start()
            url, window = daemon.url, daemon.short_window
        else:
            url = options.url.rstrip("/")
            with httpx.Client(base_url=url, timeout=10.0) as http:
                window = options.window or _shortest_window(http)
            say(f"using calmon at {url}; its windows and drift settings decide how soon things show")
        seen = _story(options, url, window, say)
    except KeyboardInterrupt:
        say("stopped")
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        if daemon is not None:
            daemon.stop()
        if workdir is not None:
            workdir.cleanup()
    missing = [m for m in MILESTONES if m not in seen]
    if missing:
        say(f"the story did not complete within --duration: no {', '.join(missing)} yet")
        return 1
    say("the story completed: drift alarm, recalibration promoted, calibrated ECE back down")
    return 0
