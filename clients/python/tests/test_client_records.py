"""Records as the API spells them, and the raw fallback computed as calmon computes it."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from calmon_client.records import encode, feedback_record, prediction_record, raw_confidence, score_record


def test_exactly_one_confidence_form_is_a_type_error_at_the_call() -> None:
    with pytest.raises(TypeError, match="exactly one of confidence, probs, logits, token_logprobs"):
        prediction_record("m", "1", 0.0, None, None, None, None, None, None)
    with pytest.raises(TypeError, match="got 2"):
        score_record("m", None, None, 0.5, [0.5, 0.5], None, None)
    with pytest.raises(TypeError, match="exactly one of correct, label"):
        feedback_record("m", "1", None, None)
    with pytest.raises(TypeError):
        feedback_record("m", "1", True, "cat")


def test_records_carry_only_what_was_given_with_the_api_field_names() -> None:
    assert prediction_record("m", "7", 12.5, "eu", "cat", None, [0.2, 0.8], None, None) == {
        "model": "m",
        "id": "7",
        "ts": 12.5,
        "segment": "eu",
        "predicted": "cat",
        "probs": [0.2, 0.8],
    }
    assert score_record("m", None, None, 0.9, None, None, None) == {"model": "m", "confidence": 0.9}
    assert feedback_record("m", "7", None, 3) == {"model": "m", "id": "7", "label": 3}
    assert feedback_record("m", "7", False, None) == {"model": "m", "id": "7", "correct": False}


def test_numpy_values_and_datetimes_encode_as_plain_json() -> None:
    when = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    record = prediction_record(
        "m", "1", when, None, np.int64(2), None, np.array([0.25, 0.75], np.float32), None, None
    )
    decoded = json.loads(encode(record))
    assert decoded == {"model": "m", "id": "1", "ts": when.timestamp(), "predicted": 2, "probs": [0.25, 0.75]}
    assert json.loads(encode({"confidence": np.float32(0.5), "correct": np.bool_(True)})) == {
        "confidence": 0.5,
        "correct": True,
    }


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_cannot_be_encoded(bad: float) -> None:
    with pytest.raises(ValueError):
        encode({"model": "m", "id": "1", "confidence": bad})
    with pytest.raises(ValueError):
        encode({"model": "m", "id": "1", "probs": np.array([bad, 0.5])})


def test_objects_json_cannot_hold_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        encode({"model": "m", "id": object()})


def test_raw_confidence_matches_an_independent_computation_for_every_form() -> None:
    logits = [2.0, -1.0, 0.5]
    softmax = np.exp(logits) / np.exp(logits).sum()
    assert raw_confidence({"logits": logits}) == pytest.approx(softmax.max(), rel=1e-12)
    assert raw_confidence({"logits": np.array([1000.0, 999.0])}) == pytest.approx(1 / (1 + math.exp(-1)))
    assert raw_confidence({"probs": [0.1, 0.7, 0.2]}) == 0.7
    assert raw_confidence({"confidence": 0.42}) == 0.42
    lp = [-0.1, -0.5, -0.02]
    assert raw_confidence({"token_logprobs": lp}) == pytest.approx(math.exp(np.mean(lp)))
    assert raw_confidence({"token_logprobs": lp}, "sum") == pytest.approx(math.exp(sum(lp)))
    assert raw_confidence({"token_logprobs": lp}, "min") == pytest.approx(math.exp(-0.5))
    assert raw_confidence({"token_logprobs": [1e-7]}) == 1.0  # round-off above 0 is clipped as calmon does
