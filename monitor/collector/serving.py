"""Calibration applied at ingest. A Scorer maps raw confidences of one (model, segment) to calibrated ones.

``RegistryScorer`` serves the active calibrators of the registry: the segment's own, else the
model-wide one (segment ``*``), else the identity. Its table is replaced atomically by ``refresh``,
which the scheduler runs on every replica every ``recalibration.serving_refresh_seconds``: a
promotion or rollback reaches every replica within that delay, and ingest itself never queries.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sqlalchemy import Engine

from monitor.calibration.calibrators import Calibrator, calibrate_rows
from monitor.store import calibrators as registry
from monitor.store.engine import READ_ONLY
from monitor.store.vectors import logits_of
from monitor.vocabulary import IDENTITY, MODEL_WIDE

__all__ = [
    "IDENTITY_VERSION",
    "IdentityScorer",
    "RegistryScorer",
    "Scorer",
    "Vectors",
]


IDENTITY_VERSION = IDENTITY  # the version reported for raw scores served unchanged


Vectors = Sequence[tuple[str, bytes | None]]  # per record: (input kind, stored float32 vector)


class Scorer(Protocol):
    def score(
        self, model: str, segment: str, raw: Sequence[float], vectors: Vectors | None = None
    ) -> tuple[list[float], str]:
        """Calibrated confidences (same order) and the calibrator version that produced them."""
        ...

    def has_calibrators(self) -> bool:
        """Whether any series is served by a calibrator (else every score is served as it came)."""
        ...


class IdentityScorer:
    def has_calibrators(self) -> bool:
        return False

    def score(
        self, model: str, segment: str, raw: Sequence[float], vectors: Vectors | None = None
    ) -> tuple[list[float], str]:
        return list(raw), IDENTITY_VERSION


class RegistryScorer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str], tuple[str, Calibrator]] = {}
        self.loaded_at: float | None = None

    def refresh(self, engine: Engine, now: float) -> None:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            records = registry.all_active(conn)
            conn.rollback()
        table = {(r.model, r.segment): (str(r.version), r.calibrator()) for r in records}
        with self._lock:
            self._table = table
            self.loaded_at = now

    def has_calibrators(self) -> bool:
        """Whether any series is served by a calibrator (else every score is served as it came)."""
        with self._lock:
            return bool(self._table)

    def lookup(self, model: str, segment: str) -> tuple[str, Calibrator] | None:
        with self._lock:
            return self._table.get((model, segment)) or self._table.get((model, MODEL_WIDE))

    def score(
        self, model: str, segment: str, raw: Sequence[float], vectors: Vectors | None = None
    ) -> tuple[list[float], str]:
        found = self.lookup(model, segment)
        if found is None:
            return list(raw), IDENTITY_VERSION
        version, calibrator = found
        logits = [logits_of(kind, vector) for kind, vector in vectors] if vectors is not None else None
        calibrated = calibrate_rows(calibrator, np.asarray(raw, dtype=np.float64), logits)
        return [float(v) for v in np.clip(calibrated, 0.0, 1.0)], version


def score_by_series(
    scorer: Scorer,
    models: Sequence[str],
    segments: Sequence[str],
    raw: Sequence[float],
    vectors: Vectors,
) -> tuple[list[float], list[str]]:
    """Per record, the calibrated confidence and version its series serves (one scorer call per
    series); the raw scores as they are when no calibrator is active. The API and the import."""
    if not scorer.has_calibrators():
        return list(raw), [IDENTITY_VERSION] * len(raw)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, key in enumerate(zip(models, segments, strict=True)):
        groups[key].append(position)
    calibrated = list(raw)
    versions = [IDENTITY_VERSION] * len(raw)
    for (model, segment), positions in groups.items():
        values, version = scorer.score(
            model, segment, [raw[p] for p in positions], [vectors[p] for p in positions]
        )
        for position, value in zip(positions, values, strict=True):
            calibrated[position] = value
            versions[position] = version
    return calibrated, versions
