"""Notifications of events: generic JSON webhook, Slack incoming webhook, e-mail, and any Apprise URL.

``webhook`` posts calmon's event itself as JSON (the contract receivers parse) and ``slack`` posts
``{"text": ...}`` to an incoming-webhook URL (Slack, or a Slack-compatible server such as
Mattermost); both are one HTTP POST, done here. Everything else goes through Apprise: ``email``
(built from ``smtp_host``/``sender``/``recipients`` as an Apprise ``mailto://`` URL) and ``apprise``,
whose ``url`` is any Apprise URL — Microsoft Teams, PagerDuty, Opsgenie, Discord, Telegram, ntfy,
e-mail with TLS and authentication, and the rest of its services.

``Notifier.notify`` only enqueues: delivery runs in one background thread, retried with exponential
backoff, so a slow or failing receiver never blocks or fails the job or request that raised the
event. Every final outcome is logged and counted (``calmon_notifications_total{kind,outcome}``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from monitor.config import NotificationConfig
from monitor.telemetry import ServiceMetrics

__all__ = ["Notifier", "apprise_url"]

log = logging.getLogger("calmon.notify")


def _summary(event: dict[str, Any]) -> str:
    where = "/".join(x for x in (event.get("model"), event.get("segment")) if x)
    payload = event.get("payload", {})
    detail = payload.get("reason") or payload.get("kind") or payload.get("error") or ""
    report = f" (decision report: {payload['report']})" if payload.get("report") else ""
    return f"calmon {event['event']} {where}: {detail}{report}".strip()


class Notifier:
    def __init__(self, receivers: list[NotificationConfig], metrics: ServiceMetrics | None = None):
        self._receivers = receivers
        self._metrics = metrics
        self._queue: queue.Queue[tuple[NotificationConfig, dict[str, Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self._receivers and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="calmon-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout``), then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._stop.set()
            self._thread = None

    def notify(self, kind: str, model: str | None, segment: str | None, payload: dict[str, Any]) -> None:
        event = {"event": kind, "model": model, "segment": segment, "payload": payload, "ts": time.time()}
        for receiver in self._receivers:
            if not receiver.events or kind in receiver.events:
                self._queue.put((receiver, event))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.deliver(*item)

    def deliver(self, receiver: NotificationConfig, event: dict[str, Any]) -> bool:
        """Try up to ``max_attempts`` times with doubling backoff; True when delivered."""
        delay = receiver.backoff_seconds
        for attempt in range(1, receiver.max_attempts + 1):
            try:
                self._send(receiver, event)
            except Exception as exc:  # any receiver failure: retry, then give up loudly
                log.warning(
                    "notification attempt failed",
                    extra={
                        "receiver": receiver.kind,
                        "attempt": attempt,
                        "event": event["event"],
                        "error": str(exc),
                    },
                )
                if attempt < receiver.max_attempts and not self._stop.wait(delay):
                    delay *= 2
                    continue
                self._count(receiver.kind, "failed")
                log.error(
                    "notification dropped after retries",
                    extra={"receiver": receiver.kind, "event": event["event"]},
                )
                return False
            else:
                self._count(receiver.kind, "delivered")
                return True
        return False

    def _count(self, kind: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.notifications.labels(kind, outcome).inc()

    @staticmethod
    def _send(receiver: NotificationConfig, event: dict[str, Any]) -> None:
        if receiver.kind in ("webhook", "slack"):
            _post_json(receiver, event if receiver.kind == "webhook" else {"text": _summary(event)})
        else:
            _send_apprise(receiver, event)


def _post_json(receiver: NotificationConfig, body: dict[str, Any]) -> None:
    assert receiver.url is not None
    request = urllib.request.Request(  # noqa: S310 (URL comes from the operator's config)
        receiver.url.get_secret_value(),
        data=json.dumps(body, default=str).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=receiver.timeout_seconds) as response:  # noqa: S310
        if response.status >= 300:
            raise RuntimeError(f"receiver answered {response.status}")


def apprise_url(receiver: NotificationConfig) -> str:
    """The Apprise URL of an ``email`` or ``apprise`` receiver (timeouts added for e-mail)."""
    if receiver.kind == "apprise":
        assert receiver.url is not None
        return receiver.url.get_secret_value()
    assert receiver.smtp_host is not None and receiver.sender is not None
    query = {
        "from": receiver.sender,
        "to": ",".join(receiver.recipients),
        "cto": receiver.timeout_seconds,  # connect timeout
        "rto": receiver.timeout_seconds,  # read timeout
    }
    return f"mailto://{quote(receiver.smtp_host)}:{receiver.smtp_port}?{urlencode(query)}"


def _send_apprise(receiver: NotificationConfig, event: dict[str, Any]) -> None:
    import apprise  # 0.3 s to load its ~190 plugins: only in processes that deliver through it

    client = apprise.Apprise()
    if not client.add(apprise_url(receiver)):
        raise ValueError(f"not an Apprise URL this version understands ({receiver.kind} receiver)")
    if not client.notify(title=_summary(event), body=json.dumps(event, indent=2, default=str)):
        raise RuntimeError(f"{receiver.kind} receiver refused or could not be reached")
