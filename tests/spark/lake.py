"""A history as a data lake holds it (a prediction table, a label table), and its sketch parts
computed without Spark (``partials`` on one frame), for the route's tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from monitor.config import Settings
from monitor.spark.batches import Limits, Run, documents
from monitor.spark.partials import KEY_COLUMNS, sketch_partials

ORDER = ["model", "segment", "bucket_start", "kind", "score", "bin"]


def history(
    n: int,
    now: float,
    seed: int = 7,
    models: tuple[str, ...] = ("clf",),
    segments: tuple[str, ...] = ("a", "b"),
    hours: float = 6.0,
    labelled: float = 0.7,
    overconfidence: float = 0.15,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions (model, id, segment, ts, confidence) and one label each for a share of them
    (model, id, correct, labelled_at), right less often than the confidence says."""
    rng = np.random.default_rng(seed)
    confidence = np.clip(rng.beta(6, 2, n), 0.0, 1.0)
    confidence[: min(n, 5)] = [0.0, 1.0, 0.5, 0.95, 0.999][: min(n, 5)]  # edges and the tail
    ts = np.sort(now - hours * 3600 + rng.uniform(0, hours * 3600 - 60, n))
    predictions = pd.DataFrame(
        {
            "model": rng.choice(list(models), n),
            "id": [f"p{i}" for i in range(n)],
            "segment": rng.choice(list(segments), n),
            "ts": ts,
            "confidence": confidence,
        }
    )
    chosen = rng.random(n) < labelled
    right = rng.random(n) < np.clip(confidence - overconfidence, 0, 1)
    labels = pd.DataFrame(
        {
            "model": predictions["model"][chosen],
            "id": predictions["id"][chosen],
            "correct": right[chosen],
            "labelled_at": ts[chosen] + 30.0,
        }
    ).reset_index(drop=True)
    return predictions, labels


def joined(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per prediction (unique ids), its label as 1.0 / 0.0 / -1.0."""
    both = predictions.merge(labels[["model", "id", "correct"]], on=["model", "id"], how="left")
    correct = both["correct"].map({True: 1.0, False: 0.0}).fillna(-1.0).astype(np.float64)
    return pd.DataFrame(
        {
            "model": both["model"],
            "segment": both["segment"],
            "ts": both["ts"],
            "raw": both["confidence"],
            "calibrated": both["confidence"],
            "correct": correct,
        }
    )


def tolerance_of(settings: Settings, models: Any) -> dict[str, float]:
    return {m: settings.tolerance_for(m) for m in models}


def parts_of(
    rows: pd.DataFrame,
    settings: Settings,
    run_id: str = "lake",
    limits: Limits | None = None,
    sample: int = 0,
) -> list[dict[str, Any]]:
    """The parts the Spark job would send for these rows (one partition: no Spark)."""
    limits = limits or Limits()
    cfg = settings.evaluation
    tolerance = tolerance_of(settings, rows["model"].unique())
    partial = sketch_partials(rows, cfg.bucket_seconds, cfg.fine_bins, cfg.ece_bins, tolerance)
    sums = partial.groupby(list(KEY_COLUMNS), as_index=False, sort=False).sum().sort_values(ORDER)
    series = rows.groupby(["model", "segment"], as_index=False).agg(
        first_ts=("ts", "min"), last_ts=("ts", "max")
    )
    labelled = rows[rows["correct"] >= 0].sort_values("ts", ascending=False)
    newest = labelled.groupby(["model", "segment"]).head(sample) if sample else labelled.iloc[:0]
    training = pd.DataFrame(
        {
            "model": newest["model"],
            "segment": newest["segment"],
            "ts": newest["ts"],
            "confidence": newest["raw"],
            "correct": newest["correct"] == 1.0,
        }
    )
    run = Run(run_id, cfg.bucket_seconds, cfg.fine_bins, cfg.ece_bins, tolerance)
    return list(documents([sums], series, training, run, limits))
