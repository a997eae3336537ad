"""The stored form of probability and logit vectors: float32 little-endian, bounded length."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FLOAT32_MAX",
    "logits_of",
    "pack_vector",
    "unpack_vector",
]


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: what a stored vector can hold


def pack_vector(values: Sequence[float]) -> bytes:
    """float32 little-endian: compact and exact enough for logits/probabilities."""
    return struct.pack(f"<{len(values)}f", *values)


def unpack_vector(blob: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


def logits_of(kind: str, vector: bytes | None) -> NDArray[np.float64] | None:
    """Class logits of a stored vector: logits as given, probabilities as log-probabilities."""
    if vector is None or kind not in ("logits", "probs"):
        return None
    values = np.asarray(unpack_vector(vector), dtype=np.float64)
    return values if kind == "logits" else np.log(np.clip(values, 1e-12, 1.0))
