"""What is retried, split, refused and counted: the sans-IO core both clients share."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from calmon_client.delivery import FEEDBACK, PREDICTION, Delivery, OnceLog, RetryPolicy, retry_after
from calmon_client.records import encode
from calmon_client.results import Counters


def predictions(n: int) -> list[tuple[str, bytes]]:
    return [(PREDICTION, encode({"model": "m", "id": str(i), "confidence": 0.5})) for i in range(n)]


def delivery(items: list[tuple[str, bytes]], policy: RetryPolicy | None = None) -> tuple[Delivery, Counters]:
    counters = Counters()
    return Delivery(items, counters, OnceLog(), policy or RetryPolicy()), counters


def ok(n: int, duplicates: int = 0, rejected: int = 0) -> bytes:
    return json.dumps(
        {
            "accepted": n - duplicates - rejected,
            "duplicates": duplicates,
            "rejected": [{"index": 0, "id": "0", "field": "confidence", "error": "x"}] * rejected,
            "results": [],
        }
    ).encode()


def test_predictions_go_before_feedback_and_each_kind_in_one_request() -> None:
    items = [(FEEDBACK, encode({"model": "m", "id": "1", "correct": True})), *predictions(3)]
    d, counters = delivery(items)
    path, body = d.request()
    assert path == PREDICTION and [r["id"] for r in json.loads(body)["predictions"]] == ["0", "1", "2"]
    assert d.answered(200, {}, ok(3, duplicates=1)) == 0.0
    path, body = d.request()
    assert path == FEEDBACK and json.loads(body) == {"feedback": [{"model": "m", "id": "1", "correct": True}]}
    d.answered(
        200,
        {},
        json.dumps({"matched": 0, "pending": 1, "duplicates": 0, "conflicts": 0, "rejected": []}).encode(),
    )
    assert d.done
    stats = counters.snapshot(0)
    assert (stats.delivered, stats.duplicates, stats.rejected) == (4, 1, 0)


def test_records_calmon_rejects_inside_a_2xx_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d, counters = delivery(predictions(5))
    with caplog.at_level(logging.WARNING, "calmon_client"):
        d.answered(200, {}, ok(5, rejected=2))
    assert "calmon rejected 2 records on /v1/predictions" in caplog.text
    caplog.clear()
    assert counters.snapshot(0).rejected == 2 and counters.snapshot(0).delivered == 3
    d2 = Delivery(predictions(5), counters, d._once, RetryPolicy())
    with caplog.at_level(logging.WARNING, "calmon_client"):
        d2.answered(200, {}, ok(5, rejected=2))
    assert not caplog.records  # the same kind of rejection is not logged twice


@pytest.mark.parametrize("status", [503, 500, 502, 504, 429, 408])
def test_retryable_answers_keep_the_records_and_back_off(status: int) -> None:
    policy = RetryPolicy(initial=0.5, multiplier=2, max_backoff=3)
    d, counters = delivery(predictions(2), policy)
    waits = [d.answered(status, {}, b"{}") for _ in range(6)]
    assert not d.done and d.request()[0] == PREDICTION
    caps = [0.5, 1, 2, 3, 3, 3]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True))
    assert counters.snapshot(0).retries == 6
    assert d.answered(200, {}, ok(2)) == 0.0 and d.done and d.attempt == 0


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    policy = RetryPolicy(initial=0.1, max_backoff=1, max_retry_after=30)
    d, _ = delivery(predictions(1), policy)
    assert d.answered(503, {"retry-after": "5"}, b"{}") == 5.0
    assert d.answered(429, {"retry-after": "3600"}, b"{}") == 30.0
    assert 0.05 <= d.failed(ConnectionError("refused")) <= 1.0


def test_retry_after_header_forms() -> None:
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({}) is None
    assert retry_after({"retry-after": "soon"}) is None
    later = datetime.now(UTC) + timedelta(seconds=20)
    assert 15 <= (retry_after({"retry-after": format_datetime(later, usegmt=True)}) or 0) <= 20
    assert retry_after({"retry-after": "-3"}) == 0.0


def test_413_halves_the_batch_until_single_records_are_refused() -> None:
    d, counters = delivery(predictions(5))
    sizes = []
    while not d.done:
        _, body = d.request()
        n = len(json.loads(body)["predictions"])
        sizes.append(n)
        d.answered(413 if n > 2 else 200, {}, ok(n) if n <= 2 else b'{"error": "too big"}')
    assert sizes == [5, 2, 3, 1, 2]
    assert counters.snapshot(0).delivered == 5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 415, 422])
def test_other_client_errors_are_refusals_never_retried(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    d, counters = delivery(predictions(3))
    with caplog.at_level(logging.WARNING, "calmon_client"):
        assert d.answered(status, {}, b'{"error": "bad", "field": "confidence", "index": 0}') == 0.0
    assert d.done and counters.snapshot(0).rejected == 3 and counters.snapshot(0).retries == 0
    assert f"HTTP {status}" in caplog.text and "bad (field confidence, index 0)" in caplog.text


def test_abandon_counts_what_was_left_as_dropped() -> None:
    d, counters = delivery([*predictions(4), (FEEDBACK, encode({"model": "m", "id": "1", "correct": True}))])
    d.answered(503, {}, b"{}")
    assert d.abandon("closing") == 5 and d.done
    assert counters.snapshot(0).dropped == 5
