"""Calibration applied at ingest. A Scorer maps raw confidences of one (model, segment) to calibrated ones.

Only the identity exists until the recalibration registry lands; the collector depends on this
protocol, not on where calibrators come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

IDENTITY_VERSION = "identity"


class Scorer(Protocol):
    def score(self, model: str, segment: str, raw: Sequence[float]) -> tuple[list[float], str]:
        """Calibrated confidences (same order) and the calibrator version that produced them."""
        ...


class IdentityScorer:
    def score(self, model: str, segment: str, raw: Sequence[float]) -> tuple[list[float], str]:
        return list(raw), IDENTITY_VERSION
