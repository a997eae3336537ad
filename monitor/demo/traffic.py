"""Simulated models whose confidences are honest until told otherwise.

``qa-bot`` is an LLM answering questions, sending the token log-probabilities of each answer;
``ticket-router`` is a 4-class classifier sending logits. A prediction is right with the
probability its confidence claims, except in a drifted series: there the model has turned
overconfident (it claims ``sigmoid(2.5 * logit(q))`` when it is right with probability ``q``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["DRIFTING", "SERIES", "Prediction", "Series", "Traffic"]

ROUTES = ("billing", "technical", "sales", "other")


@dataclass(frozen=True)
class Series:
    model: str
    segment: str
    rate: float  # predictions per second at --speed 1
    kind: str  # "llm" (token log-probabilities) or "classifier" (logits)
    label_share: float  # share of predictions whose label ever arrives


SERIES = (
    Series("qa-bot", "billing", 6.0, "llm", 0.9),
    Series("qa-bot", "shipping", 6.0, "llm", 0.9),
    Series("qa-bot", "returns", 16.0, "llm", 0.9),
    Series("ticket-router", "en", 8.0, "classifier", 0.95),
    Series("ticket-router", "de", 4.0, "classifier", 0.95),
)
DRIFTING = ("qa-bot", "returns")


@dataclass(frozen=True)
class Prediction:
    model: str
    id: str
    segment: str
    scores: dict[str, Any]  # keyword arguments of Client.log_prediction
    feedback: dict[str, Any] | None  # keyword arguments of Client.log_feedback; None: never labelled


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Traffic:
    def __init__(self, seed: int, run: str):
        self._rng = random.Random(seed)
        self._run = run  # keeps ids unique across demo runs against the same daemon
        self._count = 0

    def _id(self) -> str:
        self._count += 1
        return f"{self._run}-{self._count}"

    def llm(self, series: Series, drifted: bool) -> Prediction:
        q = self._rng.uniform(0.3, 0.97)  # how likely this answer is right
        claimed = _sigmoid(2.5 * math.log(q / (1 - q))) if drifted else q
        claimed = min(claimed, 0.999)
        weights = [self._rng.expovariate(1.0) for _ in range(self._rng.randint(3, 14))]
        total = sum(weights)
        # token log-probabilities whose mean is log(claimed): exp(mean) is calmon's default aggregation
        logprobs = [math.log(claimed) * len(weights) * w / total for w in weights]
        correct = self._rng.random() < q
        labelled = self._rng.random() < series.label_share
        return Prediction(
            series.model,
            self._id(),
            series.segment,
            {"token_logprobs": logprobs},
            {"correct": correct} if labelled else None,
        )

    def classifier(self, series: Series) -> Prediction:
        logits = [self._rng.gauss(0.0, 1.6) for _ in ROUTES]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        truth = self._rng.choices(ROUTES, weights)[0]
        predicted = ROUTES[logits.index(top)]
        labelled = self._rng.random() < series.label_share
        return Prediction(
            series.model,
            self._id(),
            series.segment,
            {"logits": logits, "predicted": predicted},
            {"label": truth} if labelled else None,
        )

    def next(self, series: Series, drifted: bool) -> Prediction:
        return self.llm(series, drifted) if series.kind == "llm" else self.classifier(series)

    def label_delay(self, speed: float) -> float:
        """Seconds until a label arrives: 5 to 25 s at --speed 1 (hours to weeks in real life)."""
        return self._rng.uniform(5.0, 25.0) / speed
