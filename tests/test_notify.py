"""Notifications against real local receivers: webhook, Slack format, e-mail and an Apprise URL through
Apprise, and a failing receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from monitor.config import NotificationConfig
from monitor.notify import Notifier, apprise_url
from monitor.telemetry import ServiceMetrics
from tests.support.polling import eventually
from tests.support.receivers import HttpReceiver, SmtpReceiver


@dataclass
class Receivers:
    webhook: HttpReceiver
    slack: HttpReceiver
    failing: HttpReceiver
    apprise_json: HttpReceiver
    smtp: SmtpReceiver


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    made = Receivers(HttpReceiver(), HttpReceiver(), HttpReceiver(status=500), HttpReceiver(), SmtpReceiver())
    yield made
    for receiver in (made.webhook, made.slack, made.failing, made.apprise_json, made.smtp):
        receiver.stop()


def test_every_receiver_kind_and_a_failing_one(receivers: Receivers) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    r = receivers
    apprise_json = r.apprise_json.url.replace("http://", "json://")  # Apprise's generic JSON service
    notifier = Notifier(
        [
            NotificationConfig(kind="webhook", url=r.webhook.url, events=["calibrator_promoted"]),
            NotificationConfig(kind="slack", url=r.slack.url),
            NotificationConfig(kind="webhook", url=r.failing.url, max_attempts=3, backoff_seconds=0.05),
            NotificationConfig(
                kind="email",
                smtp_host="127.0.0.1",
                smtp_port=r.smtp.port,
                sender="calmon@example.invalid",
                recipients=["oncall@example.invalid", "ml@example.invalid"],
            ),
            NotificationConfig(kind="apprise", url=apprise_json, events=["drift_detected"]),
        ],
        metrics,
    )
    notifier.start()
    started = time.perf_counter()
    notifier.notify("calibrator_promoted", "qa-bot", "*", {"reason": "isotonic: promote: every check passed"})
    notifier.notify("drift_detected", "qa-bot", "billing", {"kind": "calibration"})
    assert time.perf_counter() - started < 0.1  # enqueued, never delivered inline
    eventually(
        lambda: r.failing.attempts >= 6 and len(r.smtp.messages) == 4 and len(r.slack.requests) == 2,
        what="every receiver to be tried",
    )
    eventually(lambda: len(r.apprise_json.requests) == 1, what="the Apprise delivery")
    notifier.stop()
    assert [req["event"] for req in r.webhook.requests] == ["calibrator_promoted"]
    assert r.webhook.requests[0]["payload"]["reason"].startswith("isotonic")
    assert r.slack.requests[0] == {
        "text": "calmon calibrator_promoted qa-bot/*: isotonic: promote: every check passed"
    }
    mails = r.smtp.messages  # Apprise sends one message per recipient
    assert (
        sorted(to for m in mails for to in m.rcpt_tos)
        == ["ml@example.invalid"] * 2 + ["oncall@example.invalid"] * 2
    )
    assert sum(b"drift_detected" in m.content for m in mails) == 2
    assert {m.mail_from for m in mails} == {"calmon@example.invalid"}
    assert r.apprise_json.requests[0]["title"] == "calmon drift_detected qa-bot/billing: calibration"
    assert '"kind": "calibration"' in r.apprise_json.requests[0]["message"]
    assert r.failing.attempts == 6  # 3 attempts for each of the 2 events
    count = registry.get_sample_value
    assert count("calmon_notifications_total", {"kind": "webhook", "outcome": "failed"}) == 2
    assert count("calmon_notifications_total", {"kind": "email", "outcome": "delivered"}) == 2
    assert count("calmon_notifications_total", {"kind": "apprise", "outcome": "delivered"}) == 1


def test_an_unreachable_apprise_receiver_is_retried_then_counted_as_failed() -> None:
    registry = CollectorRegistry()
    dead = HttpReceiver()
    dead.stop()  # nothing listens on that port any more
    notifier = Notifier(
        [
            NotificationConfig(
                kind="apprise", url=f"json://127.0.0.1:{dead.port}/", max_attempts=2, backoff_seconds=0
            )
        ],
        ServiceMetrics(registry),
    )
    notifier.start()
    notifier.notify("calibrator_rejected", "m", "*", {})
    labels = {"kind": "apprise", "outcome": "failed"}
    eventually(
        lambda: registry.get_sample_value("calmon_notifications_total", labels) == 1, what="the failure"
    )
    notifier.stop()


def test_email_settings_become_an_apprise_mailto_url() -> None:
    receiver = NotificationConfig(
        kind="email", smtp_host="smtp.internal", sender="calmon@corp", recipients=["a@corp", "b@corp"]
    )
    assert apprise_url(receiver) == (
        "mailto://smtp.internal:25?from=calmon%40corp&to=a%40corp%2Cb%40corp&cto=10.0&rto=10.0"
    )


def test_incomplete_receivers_are_refused_by_config() -> None:
    with pytest.raises(ValueError, match="needs 'url'"):
        NotificationConfig(kind="slack")
    with pytest.raises(ValueError, match="smtp_host"):
        NotificationConfig(kind="email", sender="a@b.c")
    with pytest.raises(ValidationError, match="Apprise understands"):
        NotificationConfig(kind="apprise", url="nosuchservice://x")
    for url in (
        "pagerduty://routingkey@apikey",
        "opsgenie://apikey/",
        "discord://4174216298/JHMHI8qBe7bk2Zw",
    ):
        assert NotificationConfig(kind="apprise", url=url).kind == "apprise"
