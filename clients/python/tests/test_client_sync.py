"""The thread-backed client against a loopback HTTP server scripted to misbehave on cue."""

from __future__ import annotations

import logging
import os
import time

import pytest
from conftest import ScriptedStandin, Seen, calmon_like

from calmon_client import Client, RetryPolicy

FAST = RetryPolicy(initial=0.05, max_backoff=0.2)


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_batches_by_size_and_flush_sends_the_rest(standin: ScriptedStandin) -> None:
    with Client(standin.url, batch_size=10, flush_interval=60, retry=FAST) as client:
        for i in range(10):
            client.log_prediction("m", str(i), confidence=0.8, segment="eu")
        wait_for(lambda: len(standin.records()) == 10)
        assert len(standin.records()) == 10  # a full batch goes without waiting for the interval
        for i in range(10, 15):
            client.log_prediction("m", str(i), confidence=0.8, segment="eu")
        time.sleep(0.3)
        assert len(standin.records()) == 10 and client.stats().queued == 5  # a partial one waits
        assert client.flush(5)
        assert [r["id"] for r in standin.records()] == [str(i) for i in range(15)]
        assert [len(s.body["predictions"]) for s in standin.seen] == [10, 5]
        assert client.stats().delivered == 15 and client.stats().queued == 0


def test_batches_by_interval_without_any_flush(standin: ScriptedStandin) -> None:
    client = Client(standin.url, batch_size=1000, flush_interval=0.1, retry=FAST)
    try:
        client.log_prediction("m", "a", probs=[0.3, 0.7], ts=1.7e9, predicted=1)
        client.log_feedback("m", "a", label=1)
        deadline = time.monotonic() + 3
        while len(standin.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert standin.records() == [
            {"model": "m", "id": "a", "ts": 1.7e9, "predicted": 1, "probs": [0.3, 0.7]}
        ]
        assert standin.records("/v1/feedback") == [{"model": "m", "id": "a", "label": 1}]
    finally:
        client.close()


def test_the_token_is_sent_as_a_bearer_header(standin: ScriptedStandin) -> None:
    with Client(standin.url, token="s3cret", flush_interval=0.05) as client:
        client.log_prediction("m", "1", confidence=0.5)
        assert client.flush(5)
        assert client.calibrate("m", confidence=0.5).confidence == pytest.approx(0.45)
    assert {s.headers["authorization"] for s in standin.seen} == {"Bearer s3cret"}


def test_ts_defaults_to_the_call_time_not_the_delivery_time(standin: ScriptedStandin) -> None:
    with Client(standin.url, flush_interval=0.3) as client:
        before = time.time()
        client.log_prediction("m", "1", confidence=0.5)
        after = time.time()
        time.sleep(0.4)
        assert client.flush(5)
    assert before <= standin.records()[0]["ts"] <= after


def test_retries_honour_retry_after_and_never_double_count(standin: ScriptedStandin) -> None:
    answers = iter([(503, {"retry-after": "1"}, {"error": "database unavailable; retry later"})])

    def script(request: Seen) -> tuple[int, dict[str, str], object]:
        return next(answers, None) or calmon_like(request)

    standin.script = script
    with Client(standin.url, flush_interval=0.05, retry=FAST) as client:
        for i in range(3):
            client.log_prediction("m", str(i), confidence=0.5)
        assert client.flush(10)
        first, second = standin.seen
        assert second.at - first.at >= 1.0  # waited as told, though the backoff alone was 0.05 s
        assert second.body == first.body  # the same batch again: calmon de-duplicates by (model, id)
        stats = client.stats()
        assert (stats.delivered, stats.retries, stats.requests) == (3, 1, 2)


def test_logging_never_waits_while_calmon_is_down_and_a_full_queue_drops_the_oldest(
    dead_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(dead_url, max_queue=100, batch_size=10, flush_interval=0.01, retry=FAST)
    try:
        with caplog.at_level(logging.WARNING, "calmon_client"):
            slowest = 0.0
            for i in range(1000):
                start = time.perf_counter()
                client.log_prediction("m", str(i), confidence=0.5)
                slowest = max(slowest, time.perf_counter() - start)
            assert slowest < 0.05  # no network on the app's thread (typically a few microseconds)
            stats = client.stats()
            assert stats.queued <= 100 + 10 and stats.dropped >= 1000 - 100 - 10  # bounded: queue + a batch
            time.sleep(0.5)
            client.close(0.2)
    finally:
        client.close(0.2)
    stats = client.stats()
    assert stats.delivered == 0 and stats.queued == 0 and stats.dropped == 1000
    assert caplog.text.count("queue full") == 1  # counted every time, logged once
    assert caplog.text.count("calmon unavailable") == 1  # one outage, one line, however many retries


def test_the_queue_is_bounded_in_bytes_too(dead_url: str) -> None:
    client = Client(
        dead_url, max_queue=1_000_000, max_queue_bytes=1_000_000, flush_interval=60, flush_at_exit=None
    )
    try:
        for i in range(100):  # ~26 KB each: 2.6 MB offered, at most 1 MB kept
            client.log_prediction("m", str(i), token_logprobs=[-0.123456789] * 2000)
        assert client.queue.bytes <= 1_000_000 and client.stats().dropped >= 60
        assert client.stats().queued + client.stats().dropped == 100
    finally:
        client.close(0.1)


def test_a_record_json_cannot_hold_is_counted_and_logged_never_raised(
    standin: ScriptedStandin, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "calmon_client"),
        Client(standin.url, flush_interval=0.05) as client,
    ):
        client.log_prediction("m", "nan", confidence=float("nan"))
        client.log_prediction("m", "inf", logits=[float("inf"), 0.0])
        client.log_prediction("m", "ok", confidence=0.5)
        assert client.flush(5)
        assert (client.stats().rejected, client.stats().delivered) == (2, 1)
    assert [r["id"] for r in standin.records()] == ["ok"]
    assert caplog.text.count("dropped a record that is not JSON") == 1


def test_close_gives_up_within_its_timeout_and_counts_what_it_lost(dead_url: str) -> None:
    client = Client(dead_url, flush_interval=0.01, retry=RetryPolicy(initial=5, max_backoff=5))
    for i in range(10):
        client.log_prediction("m", str(i), confidence=0.5)
    assert not client.flush(0.3)
    start = time.monotonic()
    client.close(timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert client.stats().dropped == 10


def test_closing_while_calmon_is_down_backs_off_instead_of_spinning(dead_url: str) -> None:
    client = Client(dead_url, flush_interval=0.01, retry=RetryPolicy(initial=0.2, max_backoff=0.4))
    client.log_prediction("m", "1", confidence=0.5)
    time.sleep(0.1)
    client.close(timeout=1.2)
    assert 2 <= client.stats().requests <= 10  # ~0.3 s apart, not a retry storm once the stop is set
    assert client.stats().dropped == 1


def test_inline_calibration_answers_and_falls_back_to_the_raw_score_in_time(standin: ScriptedStandin) -> None:
    with Client(standin.url, calibrate_timeout=0.3, breaker_seconds=60) as client:
        answer = client.calibrate("m", confidence=0.8, segment="eu")
        assert (answer.confidence, answer.raw_confidence, answer.calibrator_version, answer.fallback) == (
            pytest.approx(0.72),
            0.8,
            "3",
            False,
        )
        standin.delay = 2.0  # calmon stalls
        start = time.monotonic()
        slow = client.calibrate("m", logits=[2.0, 0.0])
        assert time.monotonic() - start < 1.0
        assert slow.fallback and "ReadTimeout" in (slow.reason or "")
        assert slow.confidence == pytest.approx(1 / (1 + pytest.importorskip("math").exp(-2.0)))
        start = time.monotonic()
        assert client.calibrate("m", confidence=0.6).fallback  # the breaker is open: not even asked
        assert time.monotonic() - start < 0.05
        assert len([s for s in standin.seen if s.path == "/v1/calibrate"]) == 2


def test_calibrate_with_a_target_returns_calmons_advice_and_reviews_on_fallback(
    standin: ScriptedStandin, dead_url: str
) -> None:
    with Client(standin.url) as client:
        high = client.calibrate("m", confidence=0.9, target=0.95)
        low = client.calibrate("m", confidence=0.5, target=0.95)
        plain = client.calibrate("m", confidence=0.9)
    assert (high.action, high.threshold, low.action) == ("accept", 0.7, "review")
    assert plain.action is None and plain.threshold is None
    assert [s.query for s in standin.seen] == [{"target": ["0.95"]}, {"target": ["0.95"]}, {}]
    with Client(dead_url, calibrate_timeout=0.2) as down:
        fallback = down.calibrate("m", confidence=0.99, target=0.9)
    assert fallback.fallback and fallback.action == "review"  # no advice: the conservative choice


def test_log_with_wait_and_a_target_returns_the_action_too(standin: ScriptedStandin, dead_url: str) -> None:
    with Client(standin.url) as client:
        high = client.log_prediction("m", "1", confidence=0.9, wait=True, target=0.95)
        low = client.log_prediction("m", "2", confidence=0.5, wait=True, target=0.95)
        with pytest.raises(TypeError, match="target needs wait=True"):
            client.log_prediction("m", "3", confidence=0.5, target=0.95)  # type: ignore[call-overload]
    assert (high.action, high.threshold, low.action) == ("accept", 0.7, "review")
    assert [s.query for s in standin.seen if s.path == "/v1/predictions"][:2] == [{"target": ["0.95"]}] * 2
    with Client(dead_url, calibrate_timeout=0.2) as down:
        fallback = down.log_prediction("m", "4", confidence=0.99, wait=True, target=0.9)
        down.close(timeout=0.1)
    assert fallback.fallback and fallback.action == "review"


def test_log_with_wait_returns_the_calibrated_score_or_queues_the_record(standin: ScriptedStandin) -> None:
    with Client(
        standin.url, calibrate_timeout=0.3, breaker_seconds=0.01, flush_interval=0.05, retry=FAST
    ) as client:
        served = client.log_prediction("m", "1", confidence=0.5, wait=True)
        assert served.confidence == pytest.approx(0.45) and not served.fallback
        assert client.stats().delivered == 1
        standin.delay = 1.0
        late = client.log_prediction("m", "2", confidence=0.5, wait=True)
        assert late.fallback and late.confidence == 0.5
        standin.delay = 0.0
        assert client.flush(10)
    ids = [r["id"] for r in standin.records()]
    assert ids.count("1") == 1 and "2" in ids  # the timed-out record was delivered in the background


def test_refused_inline_records_fall_back_and_are_counted(standin: ScriptedStandin) -> None:
    standin.script = lambda request: (
        422,
        {},
        {"error": "probs sum to 1.4, not 1", "field": "probs", "index": 0},
    )
    with Client(standin.url) as client:
        answer = client.log_prediction("m", "1", probs=[0.7, 0.7], wait=True)
        assert answer.fallback and "probs sum to 1.4" in (answer.reason or "") and answer.confidence == 0.7
        assert client.stats().rejected == 1
        with pytest.raises(ValueError, match="not JSON"):
            client.calibrate("m", confidence=float("nan"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_delivers_its_own_records_only(standin: ScriptedStandin) -> None:
    client = Client(standin.url, flush_interval=60)
    client.log_prediction("m", "parent", confidence=0.5)
    pid = os.fork()
    if pid == 0:  # the child: the parent's queued record is the parent's to send
        client.log_prediction("m", "child", confidence=0.5)
        os._exit(0 if client.flush(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(5)
    client.close()
    assert sorted(r["id"] for r in standin.records()) == ["child", "parent"]
