"""The plain-record shortcut changes nothing a client can see: for any batch, ``prepare_predictions``
answers exactly as the full path (pydantic, then ``score_prediction``) answers on its own."""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.calibration.sequence import Aggregation
from monitor.collector.plain import PlainRules, plain_prediction
from monitor.collector.schemas import PredictionIn, Rejection
from monitor.collector.validation import (
    PREDICTIONS,
    ScoredInput,
    _FieldError,
    prepare_predictions,
    score_prediction,
    validate_records,
)
from monitor.config import LimitsConfig

NOW = time.time()
LIMITS = LimitsConfig(max_id_length=40, max_label_length=12)
HORIZON = 30.0


def aggregation(model: str) -> Aggregation:
    return "mean"


def full_path(items: list[Any]) -> tuple[list[ScoredInput], list[Rejection]]:
    """The path every record took before the shortcut."""
    valid, rejected = validate_records(items, PREDICTIONS, PredictionIn)
    scored = []
    for index, record in valid:
        try:
            scored.append(score_prediction(index, record, NOW, LIMITS, aggregation, HORIZON))
        except _FieldError as exc:
            rejected.append(Rejection(index=index, id=record.id, field=exc.field, error=exc.message))
    rejected.sort(key=lambda r: r.index)
    return scored, rejected


texts = st.one_of(
    st.sampled_from(
        ["m", "clf", "模型", " x ", "", "   ", "\u3000", "a\x01", "\x7f", "*", "default", "a\tb"]
    ),
    st.sampled_from(["i" * 40, "i" * 41, "l" * 12, "l" * 13, "n" * 256, "n" * 257]),
    st.text(min_size=0, max_size=8),
)
values = st.one_of(
    texts,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NOW - 60, NOW - 29 * 86400, NOW - 31 * 86400, NOW + 3600, NOW + 3601, 0, 1, 0.5]),
    st.lists(st.floats(0, 1), max_size=3),
)


EDGES = {
    "confidence": [1.0, 1.0000001, -1e-9, -0.0, 0, 1, 2, True, "0.5", None],
    "ts": [NOW + 3600, NOW + 3600.001, NOW - 30 * 86400 + 1, NOW - 30 * 86400 - 1, -1.0, 0, None, "x"],
    "segment": ["default", "*", "", " ", "a" * 256, "a" * 257, "s\x7f", None],
    "predicted": [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, "l" * 12, "l" * 13, "", None, False],
    "id": ["i" * 40, "i" * 41, " ", "\u00a0", "ok"],
    "model": ["m" * 256, "m" * 257, "\t", "ok"],
}


@st.composite
def nearly_plain(draw: st.DrawFn) -> dict[str, Any]:
    """A plain record with one or two fields moved to an edge: where a shortcut would slip."""
    item: dict[str, Any] = {"model": "clf", "id": draw(st.sampled_from(["a", "b"])), "ts": NOW - 60,
                            "confidence": draw(st.floats(0, 1))}  # fmt: skip
    for key in draw(st.lists(st.sampled_from(sorted(EDGES)), max_size=2)):
        item[key] = draw(st.sampled_from(EDGES[key]))
    return item


@st.composite
def record(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(nearly_plain())
    if draw(st.integers(0, 20)) == 0:
        return draw(values)  # not an object at all
    item: dict[str, Any] = {}
    for key in ("model", "id", "segment", "ts", "confidence", "predicted", "probs", "extra"):
        likely = key in ("model", "id", "ts", "confidence")
        if draw(st.integers(0, 9)) < (8 if likely else 3):
            plain = {
                "model": st.sampled_from(["m", "clf"]),
                "id": st.sampled_from(["a", "b-1", "x y"]),
                "ts": st.sampled_from([NOW - 60, NOW - 3600.5, int(NOW) - 7]),
                "confidence": st.floats(0, 1),
            }.get(key)
            strategy = st.one_of(plain, values) if plain is not None else values
            item[key] = draw(strategy)
    return item


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record(), min_size=1, max_size=20))
def test_the_shortcut_answers_exactly_as_the_full_path(items: list[Any]) -> None:
    scored, rejected = prepare_predictions(items, NOW, LIMITS, aggregation, HORIZON)
    expected_scored, expected_rejected = full_path(items)
    assert rejected == expected_rejected
    assert scored == expected_scored
    for got in scored:  # same types too (a float stays a float, an int label becomes text)
        assert type(got.ts) is float and type(got.raw_confidence) is float


def test_plain_records_take_the_shortcut_and_odd_ones_do_not() -> None:
    rules = PlainRules(NOW, LIMITS, HORIZON)
    base = {"model": "clf", "id": "a", "ts": NOW - 5, "confidence": 0.9}
    assert plain_prediction(base, NOW, rules) == ("clf", "a", "default", NOW - 5, 0.9, None)
    assert plain_prediction({**base, "predicted": 3}, NOW, rules) == (
        "clf",
        "a",
        "default",
        NOW - 5,
        0.9,
        "3",
    )
    for odd in (
        {**base, "model": "模型"},  # valid, but judged by the full path
        {**base, "ts": "2026-01-01T00:00:00Z"},
        {**base, "confidence": math.nan},
        {**base, "confidence": True},
        {**base, "segment": "*"},
        {**base, "probs": [0.1, 0.9]},
        {**base, "predicted": "a\nb"},
        {k: v for k, v in base.items() if k != "confidence"},
    ):
        assert plain_prediction(odd, NOW, rules) is None, odd


def test_names_a_request_already_passed_are_not_matched_again_but_still_judged() -> None:
    """One ``PlainRules`` serves a whole batch and remembers the model and segment names it passed:
    what it remembers must not let an odd value through, nor fail on one that cannot be hashed."""
    rules = PlainRules(NOW, LIMITS, HORIZON)
    base = {"model": "*", "id": "a", "segment": "s", "ts": NOW - 5, "confidence": 0.9}
    assert plain_prediction(base, NOW, rules) is not None
    assert full_path([base])[1] == []  # "*" is a model name the API accepts
    assert rules.names == {"*", "s"}
    assert plain_prediction({**base, "segment": "*"}, NOW, rules) is None  # but never a segment
    assert plain_prediction({**base, "model": ["*"]}, NOW, rules) is None
    assert plain_prediction({**base, "segment": {"s": 1}}, NOW, rules) is None
    assert plain_prediction({**base, "model": "s", "segment": "*"}, NOW, rules) is None
