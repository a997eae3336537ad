"""Notifications against real local receivers: webhook, Slack format, SMTP, and a failing receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import NotificationConfig
from monitor.notify import Notifier
from monitor.telemetry import ServiceMetrics
from tests.support.receivers import HttpReceiver, SmtpReceiver


@pytest.fixture
def receivers() -> Iterator[dict[str, object]]:
    made = {
        "webhook": HttpReceiver(),
        "slack": HttpReceiver(),
        "failing": HttpReceiver(status=500),
        "smtp": SmtpReceiver(),
    }
    yield made
    for receiver in made.values():
        receiver.stop()  # type: ignore[attr-defined]


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():  # type: ignore[operator]
        time.sleep(0.02)


def test_every_receiver_kind_and_a_failing_one(receivers: dict[str, object]) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    webhook, slack, failing, smtp = (receivers[k] for k in ("webhook", "slack", "failing", "smtp"))
    notifier = Notifier(
        [
            NotificationConfig(kind="webhook", url=webhook.url, events=["calibrator_promoted"]),  # type: ignore[attr-defined]
            NotificationConfig(kind="slack", url=slack.url),  # type: ignore[attr-defined]
            NotificationConfig(kind="webhook", url=failing.url, max_attempts=3, backoff_seconds=0.05),  # type: ignore[attr-defined]
            NotificationConfig(
                kind="email",
                smtp_host="127.0.0.1",
                smtp_port=smtp.port,
                sender="calmon@example.invalid",  # type: ignore[attr-defined]
                recipients=["oncall@example.invalid"],
            ),
        ],
        metrics,
    )
    notifier.start()
    started = time.perf_counter()
    notifier.notify("calibrator_promoted", "qa-bot", "*", {"reason": "isotonic: promote: every check passed"})
    notifier.notify("drift_detected", "qa-bot", "billing", {"kind": "calibration"})
    assert time.perf_counter() - started < 0.1  # enqueued, never delivered inline
    wait_for(lambda: failing.attempts >= 6 and len(smtp.messages) == 2 and len(slack.requests) == 2)  # type: ignore[attr-defined]
    notifier.stop()
    assert [r["event"] for r in webhook.requests] == ["calibrator_promoted"]  # type: ignore[attr-defined]
    assert webhook.requests[0]["payload"]["reason"].startswith("isotonic")  # type: ignore[attr-defined]
    assert slack.requests[0] == {
        "text": "calmon calibrator_promoted qa-bot/*: isotonic: promote: every check passed"
    }  # type: ignore[attr-defined]
    assert "drift_detected" in smtp.messages[1].content.decode()  # type: ignore[attr-defined]
    assert failing.attempts == 6  # type: ignore[attr-defined]  # 3 attempts for each of the 2 events
    assert (
        registry.get_sample_value("calmon_notifications_total", {"kind": "webhook", "outcome": "failed"}) == 2
    )
    assert (
        registry.get_sample_value("calmon_notifications_total", {"kind": "email", "outcome": "delivered"})
        == 2
    )


def test_incomplete_receivers_are_refused_by_config() -> None:
    with pytest.raises(ValueError, match="needs 'url'"):
        NotificationConfig(kind="slack")
    with pytest.raises(ValueError, match="smtp_host"):
        NotificationConfig(kind="email", sender="a@b.c")
