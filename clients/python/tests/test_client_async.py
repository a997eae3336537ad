"""The asyncio client: the same contract, delivered by a task on the app's loop."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import ScriptedStandin, Seen, calmon_like

from calmon_client import AsyncClient, RetryPolicy

FAST = RetryPolicy(initial=0.05, max_backoff=0.2)


def test_async_batches_flushes_and_closes(standin: ScriptedStandin) -> None:
    async def main() -> None:
        async with AsyncClient(standin.url, batch_size=10, flush_interval=60, retry=FAST) as client:
            for i in range(10):
                await client.log_prediction("m", str(i), token_logprobs=[-0.1, -0.2], segment="s")
            await client.log_feedback("m", "3", correct=True)
            for _ in range(200):
                if standin.records():
                    break
                await asyncio.sleep(0.01)
            assert len(standin.records()) == 10  # a full batch went without the interval
            assert await client.flush(5)
            assert standin.records("/v1/feedback") == [{"model": "m", "id": "3", "correct": True}]
            assert client.stats().delivered == 11

    asyncio.run(main())


def test_async_retries_after_503_and_delivers_once(standin: ScriptedStandin) -> None:
    answers = iter([(503, {"retry-after": "0.5"}, {"error": "retry later"})])

    def script(request: Seen) -> tuple[int, dict[str, str], object]:
        return next(answers, None) or calmon_like(request)

    standin.script = script

    async def main() -> None:
        client = AsyncClient(standin.url, flush_interval=0.05, retry=FAST)
        await client.log_prediction("m", "1", confidence=0.5)
        assert await client.flush(5)
        await client.aclose()
        assert client.stats().delivered == 1 and client.stats().retries == 1

    asyncio.run(main())
    assert standin.seen[1].at - standin.seen[0].at >= 0.5


def test_async_inline_calibration_and_fallback(standin: ScriptedStandin) -> None:
    async def main() -> None:
        async with AsyncClient(standin.url, calibrate_timeout=0.3, flush_interval=0.05, retry=FAST) as client:
            answer = await client.calibrate("m", confidence=0.9)
            assert answer.confidence == pytest.approx(0.81) and not answer.fallback
            logged = await client.log_prediction("m", "1", confidence=0.9, wait=True)
            assert logged.calibrator_version == "3"
            standin.delay = 1.0
            start = time.monotonic()
            late = await client.log_prediction("m", "2", confidence=0.9, wait=True)
            assert late.fallback and late.confidence == 0.9 and time.monotonic() - start < 0.8
            standin.delay = 0.0
            assert await client.flush(10)

    asyncio.run(main())
    ids = [r["id"] for r in standin.records()]
    # "2" arrives twice: the timed-out request reached the stalled server, and the queued copy; calmon
    # keeps the first and counts the second as a duplicate (by model and id)
    assert ids.count("1") == 1 and set(ids) == {"1", "2"}


def test_async_close_gives_up_in_time_when_calmon_is_down(dead_url: str) -> None:
    async def main() -> None:
        client = AsyncClient(dead_url, flush_interval=0.01, retry=RetryPolicy(initial=5, max_backoff=5))
        for i in range(5):
            await client.log_prediction("m", str(i), confidence=0.5)
        start = time.monotonic()
        await client.aclose(0.3)
        assert time.monotonic() - start < 1.5
        assert client.stats().dropped == 5

    asyncio.run(main())


def test_async_closing_while_calmon_is_down_backs_off_instead_of_spinning(dead_url: str) -> None:
    async def main() -> None:
        client = AsyncClient(dead_url, flush_interval=0.01, retry=RetryPolicy(initial=0.2, max_backoff=0.4))
        await client.log_prediction("m", "1", confidence=0.5)
        await asyncio.sleep(0.1)
        await client.aclose(1.2)
        assert 2 <= client.stats().requests <= 10 and client.stats().dropped == 1

    asyncio.run(main())
