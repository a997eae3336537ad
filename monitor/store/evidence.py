"""The drift detectors' input and state: label sums waiting to be bet on, and each detector's state.

The fold appends the label sums of what it folded (``append_pending``) in its own transaction; the
evaluation reads everything pending up to an id (``load_pending``) and, in the transaction that
saves the detectors (``save_states``), deletes exactly those rows (``consume``). A crash or a lost
lease in between leaves the rows for the next evaluation: every label is bet on once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.calibration.evidence import PAIRED, label_sums
from monitor.store.schema import evidence, evidence_pending

__all__ = [
    "PAIRED",
    "PendingRow",
    "StoredDetector",
    "append_pending",
    "consume",
    "label_sum_rows",
    "load_pending",
    "load_states",
    "save_states",
]

_NO_BETS = np.zeros((0, 2))
GroupKey = tuple[str, str, float]  # (model, series segment, bucket_start)


@dataclass(frozen=True)
class PendingRow:
    model: str
    segment: str
    score: str
    bucket_start: float
    bins: int
    bin: int
    n: float
    d: float
    q: float
    tolerance: float
    g: NDArray[np.float64]  # (L, 2) bet sums; empty for the paired rows


@dataclass(frozen=True)
class StoredDetector:
    model: str
    segment: str
    score: str
    epoch: float
    steps: int
    labels: int
    log_r: NDArray[np.float64]
    run_start: NDArray[np.float64]
    alarm_since: float | None
    updated_at: float


def label_sum_rows(
    keys: list[GroupKey],
    group: NDArray[np.int64],
    bins: int,
    scores: dict[str, NDArray[np.float64]],
    y: NDArray[np.float64],
    tolerance_of: Callable[[str], float],
) -> list[PendingRow]:
    """Per group, score and occupied bin, the label sums and bet sums; per group the paired Brier
    difference. ``group``/``y`` and each score's confidences cover only the newly labelled rows."""
    tolerance = np.array([tolerance_of(model) for model, _, _ in keys])
    rows: list[PendingRow] = []
    for found in label_sums(group, len(keys), bins, scores, y, tolerance):
        cells = 1 if found.score == PAIRED else bins
        for i, k in enumerate(found.group.tolist()):
            model, segment, bucket = keys[k]
            sums = (float(found.n[i]), float(found.d[i]), float(found.q[i]), float(tolerance[k]))
            g = found.g[i] if found.g.shape[1] else _NO_BETS
            rows.append(PendingRow(model, segment, found.score, bucket, cells, int(found.bin[i]), *sums, g))
    return rows


_INSERT = (
    "INSERT INTO evidence_pending (model, segment, score, bucket_start, bins, bin, n, d, q, tolerance, g) "
    "VALUES ({marks})"
)


def append_pending(conn: Connection, rows: Iterable[PendingRow]) -> None:
    """One driver executemany (the fold's hot path: Core inserts of dicts cost twice as much)."""
    params = [
        (r.model, r.segment, r.score, r.bucket_start, r.bins, r.bin, r.n, r.d, r.q, r.tolerance,
         np.ascontiguousarray(r.g, dtype=np.float64).tobytes())
        for r in rows
    ]  # fmt: skip
    if params:
        mark = "%s" if conn.dialect.name == "postgresql" else "?"
        conn.exec_driver_sql(_INSERT.format(marks=", ".join([mark] * 11)), params)


def load_pending(conn: Connection) -> tuple[int | None, list[PendingRow]]:
    """Every pending row, and the highest id read (what ``consume`` deletes up to)."""
    top = conn.execute(select(func.max(evidence_pending.c.id))).scalar()
    if top is None:
        return None, []
    t = evidence_pending.c
    columns = (t.model, t.segment, t.score, t.bucket_start, t.bins, t.bin, t.n, t.d, t.q, t.tolerance, t.g)
    found = []
    for r in conn.execute(select(*columns).where(t.id <= top)):
        head = (r.model, r.segment, r.score, float(r.bucket_start), int(r.bins), int(r.bin))
        sums = (float(r.n), float(r.d), float(r.q), float(r.tolerance))
        found.append(PendingRow(*head, *sums, np.frombuffer(r.g, dtype=np.float64).reshape(-1, 2)))
    return int(top), found


def consume(conn: Connection, up_to: int) -> None:
    conn.execute(delete(evidence_pending).where(evidence_pending.c.id <= up_to))


def load_states(conn: Connection) -> list[StoredDetector]:
    found: list[StoredDetector] = []
    for r in conn.execute(select(evidence)):
        found.append(
            StoredDetector(
                r.model,
                r.segment,
                r.score,
                float(r.epoch),
                int(r.steps),
                int(r.labels),
                np.frombuffer(r.log_r, dtype=np.float64).copy(),
                np.frombuffer(r.run_start, dtype=np.float64).copy(),
                None if r.alarm_since is None else float(r.alarm_since),
                float(r.updated_at),
            )
        )
    return found


def save_states(conn: Connection, states: Iterable[StoredDetector]) -> None:
    """Insert or replace the stored state of each given detector."""
    rows = [
        {
            "model": s.model,
            "segment": s.segment,
            "score": s.score,
            "epoch": s.epoch,
            "steps": s.steps,
            "labels": s.labels,
            "log_r": np.ascontiguousarray(s.log_r, dtype=np.float64).tobytes(),
            "run_start": np.ascontiguousarray(s.run_start, dtype=np.float64).tobytes(),
            "alarm_since": s.alarm_since,
            "updated_at": s.updated_at,
        }
        for s in states
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(evidence)
    kept = ("model", "segment", "score")
    update = {c.name: statement.excluded[c.name] for c in evidence.columns if c.name not in kept}
    conn.execute(statement.on_conflict_do_update(index_elements=list(kept), set_=update), rows)
