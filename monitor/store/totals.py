"""Lifetime totals per (model, series segment), kept by the fold: what the model endpoints count.

Counting raw rows (``COUNT(*)`` over the predictions) took seconds at 10M rows, and summing the
sketch buckets reads millions of rows at 1,000 series; these totals are one row per series, added
to by every fold in its own transaction (so they are exactly the buckets' raw-score totals), plus,
at read time, the rows the fold has not reached yet (few: read through the fold's partial index).
Totals are lifetime: retention removes raw rows and old buckets, not what was counted.
"""

# The one statement assembled from text is built from constants; the model name is bound.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, delete, func, select, text

from monitor.store.schema import series_totals, sketch_bins
from monitor.vocabulary import Score

__all__ = [
    "SegmentCounts",
    "SeriesSums",
    "add_series_sums",
    "add_totals",
    "read_totals",
    "reset_totals",
    "unfolded_totals",
]


@dataclass(slots=True)
class SegmentCounts:
    segment: str
    predictions: int
    labelled: int
    correct: int
    raw_confidence_sum_labelled: float
    first_ts: float | None
    last_ts: float | None


def _counts(rows: Iterable[Sequence[Any]]) -> list[tuple[str, SegmentCounts]]:
    """(model, counts) from rows of model, segment, the four sums, first and last time."""
    return [
        (m, SegmentCounts(s, int(n), int(n_l), int(c), float(conf), first, last))
        for m, s, n, n_l, c, conf, first, last in rows
    ]


_COLUMNS = ("predictions", "labelled", "correct", "confidence_sum_labelled")


class SeriesSums(NamedTuple):
    """What one fold adds to one (model, series segment)'s totals."""

    model: str
    segment: str
    predictions: float
    labelled: float
    correct: float
    confidence_sum_labelled: float
    first_ts: float
    last_ts: float


def add_totals(
    conn: Connection,
    names: list[tuple[str, str]],
    series: NDArray[np.int64],
    ts: NDArray[np.float64],
    raw: NDArray[np.float64],
    correct: NDArray[np.float64],
    fresh: NDArray[np.bool_],
) -> None:
    """Add a folded batch to the totals: ``series`` indexes ``names`` (model, series segment) per
    row; ``correct`` is -1 for no label; ``fresh`` rows count as predictions (others: label only)."""
    size = len(names)
    labelled = correct >= 0
    sums = np.stack(
        [
            np.bincount(series, weights=fresh.astype(np.float64), minlength=size),
            np.bincount(series, weights=labelled.astype(np.float64), minlength=size),
            np.bincount(series, weights=np.where(labelled, correct, 0.0), minlength=size),
            np.bincount(series, weights=np.where(labelled, raw, 0.0), minlength=size),
        ],
        axis=1,
    )
    first = np.full(size, np.inf)
    last = np.full(size, -np.inf)
    np.minimum.at(first, series, ts)
    np.maximum.at(last, series, ts)
    add_series_sums(
        conn,
        [
            SeriesSums(*names[i], *map(float, sums[i]), float(first[i]), float(last[i]))  # type: ignore[call-arg]
            for i in np.flatnonzero(np.isfinite(first)).tolist()
        ],
    )


def add_series_sums(conn: Connection, rows: Iterable[SeriesSums]) -> None:
    """Add to the totals of each (model, series segment), first and last times widened."""
    params = sorted(rows)  # one lock order for every fold: two concurrent folds cannot deadlock here
    if not params:
        return
    postgres = conn.dialect.name == "postgresql"
    mark = "%s" if postgres else "?"
    least, greatest = ("LEAST", "GREATEST") if postgres else ("min", "max")
    added = ", ".join(f"{c} = series_totals.{c} + excluded.{c}" for c in _COLUMNS)
    conn.exec_driver_sql(
        "INSERT INTO series_totals (model, segment, " + ", ".join(_COLUMNS) + ", first_ts, last_ts) "
        f"VALUES ({', '.join([mark] * 8)}) ON CONFLICT (model, segment) DO UPDATE SET {added}, "
        f"first_ts = {least}(COALESCE(series_totals.first_ts, excluded.first_ts), excluded.first_ts), "
        f"last_ts = {greatest}(COALESCE(series_totals.last_ts, excluded.last_ts), excluded.last_ts)",
        params,
    )


def reset_totals(conn: Connection, fine_bins: int, since: float | None) -> None:
    """Before a rebuild deletes the buckets starting at ``since`` (all when None): take their
    raw-score sums out of the totals (equal by construction), so refolding the rows adds them back.
    First and last times stay: the same rows come back."""
    if since is None:
        conn.execute(delete(series_totals))
        return
    b = sketch_bins.c
    leaving = (
        select(b.model, b.segment, func.sum(b.n), func.sum(b.n_l), func.sum(b.sy), func.sum(b.s1))
        .where(b.score == Score.RAW, b.bin < fine_bins, b.bucket_start >= since)
        .group_by(b.model, b.segment)
    )
    params = [
        {"m": m, "s": s, "n": n, "n_l": n_l, "sy": sy, "s1": s1}
        for m, s, n, n_l, sy, s1 in conn.execute(leaving)
    ]
    if params:
        conn.execute(
            text(
                "UPDATE series_totals SET predictions = predictions - :n, labelled = labelled - :n_l, "
                "correct = correct - :sy, confidence_sum_labelled = confidence_sum_labelled - :s1 "
                "WHERE model = :m AND segment = :s"
            ),
            params,
        )


def read_totals(conn: Connection, model: str | None = None) -> list[tuple[str, SegmentCounts]]:
    """The fold's totals, per (model, series segment)."""
    query = select(*series_totals.c).order_by(series_totals.c.model, series_totals.c.segment)
    if model is not None:
        query = query.where(series_totals.c.model == model)
    return _counts(conn.execute(query))


def unfolded_totals(conn: Connection, model: str | None = None) -> list[tuple[str, SegmentCounts]]:
    """What the fold has not counted yet, per (model, raw segment): the fresh predictions of the work
    list (``fold_queue``) and the labels of its rows, read from the work list outwards (cheap while
    the fold keeps up). ``CROSS JOIN`` makes SQLite keep that order: left to choose, it walked the
    whole ``(model, segment, ts)`` index to group without sorting, probing the work list per row
    (754 ms at 10M rows with an empty work list)."""
    query = text(
        "SELECT p.model, p.segment, SUM(CASE WHEN q.fresh THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN p.correct IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN p.correct THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN p.correct IS NOT NULL THEN p.raw_confidence ELSE 0.0 END), MIN(p.ts), MAX(p.ts) "
        "FROM fold_queue q CROSS JOIN predictions p WHERE p.pk = q.pk"
        f"{' AND p.model = :model' if model is not None else ''} "
        "GROUP BY p.model, p.segment"
    )
    return _counts(conn.execute(query, {"model": model} if model else {}))
