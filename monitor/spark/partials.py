"""One partition's rows as partial sketch rows, with calmon's own sketch code (no Spark here).

The Spark job hands each partition to ``sketch_partials`` (``mapInPandas``); the rows are grouped by
(model, segment, bucket) with the fold's binning (``grouped_moments``) and the detectors' label sums
(``label_sums``), so there is one copy of the binning rules, in ``monitor.calibration``. Partial
rows merge by addition: the job sums them per key whatever partitions they came from.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from monitor.calibration.evidence import LAMBDAS, label_sums
from monitor.calibration.sketch import MOMENTS, grouped_moments
from monitor.vocabulary import Score

__all__ = ["BET_COLUMNS", "KEY_COLUMNS", "PARTIAL_SCHEMA", "VALUE_COLUMNS", "sketch_partials"]

KEY_COLUMNS = ("kind", "model", "segment", "score", "bucket_start", "bin")
# bucket rows: the ten moments; evidence rows: n, d, q in the first three, the rest 0
VALUE_COLUMNS = tuple(f"v{i}" for i in range(len(MOMENTS)))
BET_COLUMNS = tuple(f"g{k}_{j}" for k in range(len(LAMBDAS)) for j in range(2))  # λ-major, (up, down)
PARTIAL_SCHEMA = ", ".join(
    [
        "kind string",
        "model string",
        "segment string",
        "score string",
        "bucket_start double",
        "bin int",
        *(f"{c} double" for c in VALUE_COLUMNS),
        *(f"{c} double" for c in BET_COLUMNS),
    ]
)
BUCKET, EVIDENCE = "bucket", "evidence"


def sketch_partials(
    rows: pd.DataFrame,
    bucket_seconds: int,
    fine_bins: int,
    evidence_bins: int,
    tolerance: Mapping[str, float],
) -> pd.DataFrame:
    """Partial sketch rows of ``rows`` (columns model, segment, ts, raw, calibrated, correct: 1.0,
    0.0, or -1.0 without a label): per (model, segment, bucket) and score, every occupied bin's
    moments; for the labelled rows, the detectors' label sums (``tolerance``: τ per model)."""
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _dtypes().items()}).astype(
            dict.fromkeys(_TEXT, object)
        )
    bucket = np.floor(rows["ts"].to_numpy(np.float64) / bucket_seconds) * bucket_seconds
    keys = pd.MultiIndex.from_arrays([rows["model"], rows["segment"], bucket])
    group, unique = pd.factorize(keys, sort=True)
    group = group.astype(np.int64)
    correct = rows["correct"].to_numpy(np.float64)
    labelled = correct >= 0
    y = np.where(labelled, correct, 0.0)
    scores = {
        str(Score.RAW): rows["raw"].to_numpy(np.float64),
        str(Score.CALIBRATED): rows["calibrated"].to_numpy(np.float64),
    }
    names = [(str(m), str(s), float(b)) for m, s, b in unique]
    parts = []
    everything = np.ones(group.size, dtype=bool)
    for score, p in scores.items():
        moments = grouped_moments(group, len(names), fine_bins, p, y, everything, labelled)
        g, b = np.nonzero((moments[:, 0] != 0) | (moments[:, 2] != 0))
        parts.append(_frame(BUCKET, names, score, g, b, moments[g, :, b], None))
    if labelled.any():
        tau = np.array([tolerance[m] for m, _, _ in names], dtype=np.float64)
        new = {score: p[labelled] for score, p in scores.items()}
        for found in label_sums(group[labelled], len(names), evidence_bins, new, y[labelled], tau):
            values = np.column_stack([found.n, found.d, found.q])
            bets = found.g.reshape(found.g.shape[0], -1) if found.g.shape[1] else None
            parts.append(_frame(EVIDENCE, names, found.score, found.group, found.bin, values, bets))
    # object columns, not pandas 3's Arrow-backed strings (PySpark 4.3's conversion refuses those)
    return pd.concat(parts, ignore_index=True).astype(dict.fromkeys(_TEXT, object))


_TEXT = ("kind", "model", "segment", "score")


def _dtypes() -> dict[str, str]:
    return {
        "kind": "object", "model": "object", "segment": "object", "score": "object",
        "bucket_start": "float64", "bin": "int32",
        **dict.fromkeys(VALUE_COLUMNS, "float64"), **dict.fromkeys(BET_COLUMNS, "float64"),
    }  # fmt: skip


def _frame(
    kind: str,
    names: list[tuple[str, str, float]],
    score: str,
    group: np.ndarray,
    bins: np.ndarray,
    values: np.ndarray,
    bets: np.ndarray | None,
) -> pd.DataFrame:
    size = group.size
    frame = {
        "kind": np.full(size, kind, dtype=object),
        "model": np.array([names[k][0] for k in group.tolist()], dtype=object),
        "segment": np.array([names[k][1] for k in group.tolist()], dtype=object),
        "score": np.full(size, score, dtype=object),
        "bucket_start": np.array([names[k][2] for k in group.tolist()], dtype=np.float64),
        "bin": bins.astype(np.int32),
    }
    for i, column in enumerate(VALUE_COLUMNS):
        frame[column] = values[:, i] if i < values.shape[1] else np.zeros(size)
    for i, column in enumerate(BET_COLUMNS):
        frame[column] = bets[:, i] if bets is not None else np.zeros(size)
    return pd.DataFrame(frame)
