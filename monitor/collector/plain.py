"""The common prediction, checked in plain Python before pydantic sees it.

Nearly every record a client sends is the same shape: ASCII names, a number for ``ts``, a
``confidence`` and perhaps a ``predicted`` label. For that shape the full path (pydantic's model,
then ``score_prediction``, then a ``ScoredInput``) cost ~8 µs a record, a third of the HTTP
ingest's time (profiled). ``plain_prediction`` accepts a record only when it is plainly valid by
rules stricter than the API's, and builds its ``ScoredInput`` directly; anything else (a unicode
name, a vector, a text time, any defect) returns ``None`` and takes the full path, so every
rejection keeps its field and message. ``tests/collector/test_plain.py`` holds the two paths to the
same answers.
"""

from __future__ import annotations

import re
from typing import Any

from monitor.config import LimitsConfig
from monitor.vocabulary import MODEL_WIDE

__all__ = ["Plain", "PlainRules", "plain_prediction"]

# Printable ASCII with one visible character at least: a subset of the API's Name rule.
_NAME = re.compile(r"[ -~]*[!-~][ -~]*")
# No control character: the API's Label rule, for any script.
_LABEL = re.compile(r"[^\x00-\x1f\x7f]*")
_KEYS = frozenset({"model", "id", "segment", "ts", "confidence", "predicted"})
_INT64 = 2**63


class PlainRules:
    """The limits a plain record is checked against, resolved once per request."""

    __slots__ = ("id_length", "label_length", "latest", "names", "oldest")

    def __init__(self, now: float, limits: LimitsConfig, horizon_days: float | None):
        self.id_length = min(256, limits.max_id_length)
        self.label_length = min(256, limits.max_label_length)
        self.latest = now + limits.max_future_skew_seconds
        self.oldest = 0.0 if horizon_days is None else max(0.0, now - horizon_days * 86400.0)
        # Model and segment names passed in this request: a batch repeats a few of them on every
        # record, so each is matched once (the set holds at most two per record of the batch).
        self.names: set[str] = set()


def _name(value: Any, limit: int) -> bool:
    return type(value) is str and 0 < len(value) <= limit and _NAME.fullmatch(value) is not None


def _series_name(value: Any, rules: PlainRules) -> bool:
    if type(value) is not str:  # a list or an object would not even hash
        return False
    if value in rules.names:
        return True
    if _name(value, 256):
        rules.names.add(value)
        return True
    return False


Plain = tuple[str, str, str, float, float, str | None]  # model, id, segment, ts, confidence, predicted


def plain_prediction(item: Any, now: float, rules: PlainRules) -> Plain | None:
    """``item``'s fields as the full path would read them, or None when it is not plainly valid."""
    if type(item) is not dict or not _KEYS.issuperset(item):
        return None
    fields: dict[str, Any] = item
    model: Any = fields.get("model")
    pid: Any = fields.get("id")
    if not _series_name(model, rules) or not _name(pid, rules.id_length):
        return None
    segment: Any = fields.get("segment", "default")
    if segment != "default" and (segment == MODEL_WIDE or not _series_name(segment, rules)):
        return None
    ts: Any = fields.get("ts", now)
    kind = type(ts)
    if kind is int:
        ts = float(ts)
    elif kind is not float:
        return None
    if not rules.oldest <= ts <= rules.latest:  # NaN fails too
        return None
    confidence: Any = fields.get("confidence")
    kind = type(confidence)
    if kind is int:
        confidence = float(confidence)
    elif kind is not float:
        return None
    if not 0.0 <= confidence <= 1.0:
        return None
    predicted: Any = fields.get("predicted")
    if predicted is not None:
        kind = type(predicted)
        if kind is int:
            if not -_INT64 <= predicted < _INT64:
                return None
            predicted = str(predicted)
            if len(predicted) > rules.label_length:
                return None
        elif kind is not str or len(predicted) > rules.label_length or _LABEL.fullmatch(predicted) is None:
            return None
    return model, pid, segment, ts, confidence, predicted
