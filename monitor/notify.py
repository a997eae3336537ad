"""Notifications of events: generic JSON webhook, Slack incoming webhook, SMTP e-mail.

``Notifier.notify`` only enqueues: delivery runs in one background thread, retried with exponential
backoff, so a slow or failing receiver never blocks or fails the job or request that raised the
event. Every final outcome is logged and counted (``calmon_notifications_total{kind,outcome}``).
"""

from __future__ import annotations

import json
import logging
import queue
import smtplib
import threading
import time
import urllib.request
from email.message import EmailMessage
from typing import Any

from monitor.config import NotificationConfig
from monitor.telemetry import ServiceMetrics

log = logging.getLogger("calmon.notify")


def _summary(event: dict[str, Any]) -> str:
    where = "/".join(x for x in (event.get("model"), event.get("segment")) if x)
    payload = event.get("payload", {})
    detail = payload.get("reason") or payload.get("kind") or payload.get("error") or ""
    return f"calmon {event['event']} {where}: {detail}".strip()


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
            assert receiver.url is not None
            body = event if receiver.kind == "webhook" else {"text": _summary(event)}
            request = urllib.request.Request(  # noqa: S310 (URL comes from the operator's config)
                receiver.url.get_secret_value(),
                data=json.dumps(body, default=str).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=receiver.timeout_seconds) as response:  # noqa: S310
                if response.status >= 300:
                    raise RuntimeError(f"receiver answered {response.status}")
            return
        message = EmailMessage()
        message["Subject"] = _summary(event)
        message["From"] = receiver.sender
        message["To"] = ", ".join(receiver.recipients)
        message.set_content(json.dumps(event, indent=2, default=str))
        assert receiver.smtp_host is not None
        with smtplib.SMTP(receiver.smtp_host, receiver.smtp_port, timeout=receiver.timeout_seconds) as smtp:
            smtp.send_message(message)
