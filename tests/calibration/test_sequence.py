"""Token log-probabilities to one sequence confidence."""

from __future__ import annotations

import math

import pytest

from monitor.calibration.sequence import sequence_confidence


def test_aggregations() -> None:
    logprobs = [-0.1, -0.5, -0.3]
    assert sequence_confidence(logprobs, "mean") == pytest.approx(math.exp(-0.3))
    assert sequence_confidence(logprobs, "sum") == pytest.approx(math.exp(-0.9))
    assert sequence_confidence(logprobs, "min") == pytest.approx(math.exp(-0.5))
    assert sequence_confidence([0.0], "mean") == 1.0
    assert sequence_confidence([1e-8, -0.0], "sum") == 1.0  # round-off above 0 tolerated, capped at 1


@pytest.mark.parametrize(
    ("logprobs", "message"),
    [
        ([], "empty"),
        ([-0.1, 0.2], "positive"),
        ([-0.1, float("nan")], "not finite"),
        ([float("-inf")], "not finite"),
    ],
)
def test_invalid_logprobs(logprobs: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sequence_confidence(logprobs)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown token aggregation"):
        sequence_confidence([-0.1], "median")  # type: ignore[arg-type]
