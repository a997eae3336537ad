"""A scikit-learn classifier's ``predict_proba`` row (or any probability row): calmon's ``probs``,
and the predicted class so that feedback can be given as the true ``label``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from calmon_client.adapters.fields import ScoreFields

__all__ = ["from_predict_proba"]


def _plain_label(value: Any) -> str | int:
    value = value.item() if hasattr(value, "item") else value  # numpy scalars
    if isinstance(value, bool) or not isinstance(value, int | str):
        return str(value)
    return value


def from_predict_proba(row: Sequence[float] | Any, classes: Sequence[Any] | Any = None) -> ScoreFields:
    """``probs`` from one row of ``clf.predict_proba(X)``; with ``classes=clf.classes_`` also
    ``predicted``, the class of the highest probability (what ``clf.predict`` returns)."""
    probs = [float(p) for p in (row.tolist() if hasattr(row, "tolist") else row)]
    if len(probs) < 2:
        raise ValueError("a probability row needs at least two classes")
    fields: ScoreFields = {"probs": probs}
    if classes is not None:
        labels = list(classes.tolist() if hasattr(classes, "tolist") else classes)
        if len(labels) != len(probs):
            raise ValueError(f"{len(labels)} classes for {len(probs)} probabilities")
        fields["predicted"] = _plain_label(labels[max(range(len(probs)), key=probs.__getitem__)])
    return fields
