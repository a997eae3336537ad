"""What the demo reads back from the daemon, through its public API, to narrate what happened."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["RECOVERED_BELOW", "Milestone", "Watcher", "metric_lines", "recovered"]

RECOVERED_BELOW = 0.05


@dataclass(frozen=True)
class Milestone:
    name: str  # "alarm", "promoted", "refused", "recovered"
    text: str
    link: str | None = None


def recovered(calibrated: float | None, raw: float | None) -> bool:
    """The served confidences are calibrated again (ECE under 0.05) while the raw ones still miss.
    Judged on the figures as the demo prints them (3 decimals): 0.04996 would read "back to 0.050"."""
    if calibrated is None or raw is None:
        return False
    return round(calibrated, 3) < RECOVERED_BELOW <= round(raw, 3)


class Watcher:
    """Polls events and the drifting series' windows; reports each milestone once."""

    def __init__(self, http: httpx.Client, model: str, segment: str, window: str):
        self.http = http
        self.model = model
        self.segment = segment
        self.window = window
        newest = self._events(limit=1)
        self.after_id = newest[0]["id"] if newest else 0  # events of earlier runs are not this demo's
        self.seen: set[str] = set()
        self.promoted_at: float | None = None

    def _events(self, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get("/v1/events", params={"model": self.model, **params})
        response.raise_for_status()
        return list(response.json()["events"])

    def ece(self) -> dict[str, Any]:
        """ECE (raw and calibrated), labels and the mixed-calibrator flag of the drifting series."""
        response = self.http.get(f"/v1/models/{self.model}")
        response.raise_for_status()
        found: dict[str, Any] = {"raw": None, "calibrated": None, "labelled": 0, "mixed": False}
        for w in response.json().get("windows", []):
            if w["segment"] == self.segment and w["window"] == self.window:
                found[w["score"]] = w["ece"]
                found["labelled"] = w["labelled"]
                found["mixed"] = found["mixed"] or bool(w.get("calibrator_changed"))
        return found

    def poll(self) -> list[Milestone]:
        found: list[Milestone] = []
        for event in reversed(self._events(limit=100)):
            if event["id"] <= self.after_id:
                continue
            self.after_id = event["id"]
            milestone = self._milestone(event)
            if milestone is not None and milestone.name not in self.seen:
                self.seen.add(milestone.name)
                found.append(milestone)
        if "promoted" in self.seen and "recovered" not in self.seen:
            ece = self.ece()
            if recovered(ece["calibrated"], ece["raw"]):
                self.seen.add("recovered")
                found.append(
                    Milestone(
                        "recovered",
                        f"calibrated ECE of {self.model}/{self.segment} over the last "
                        f"{self.window} is back to {ece['calibrated']:.3f}, while the raw "
                        f"confidences still miss by {ece['raw']:.3f}",
                    )
                )
        return found

    def _milestone(self, event: dict[str, Any]) -> Milestone | None:
        payload = event.get("payload") or {}
        where = f"{event['model']}/{event['segment']}"
        if event["kind"] == "drift_detected" and event["segment"] == self.segment:
            if payload.get("kind") not in ("calibration", "raw_calibration"):
                return None
            crossing = next(
                (c for c in payload.get("crossings", []) if c.get("kind") == payload["kind"]), None
            )
            detail = ""
            if crossing is not None and crossing.get("window") == "evidence":  # log10 evidence vs log10 level
                detail = (
                    f": evidence {10 ** crossing['value']:,.0f} against healthy calibration passed the "
                    f"alarm level {10 ** crossing['threshold']:,.0f} after {crossing['labelled']:,} labels"
                )
            elif crossing is not None:
                value, threshold = crossing["value"], crossing["threshold"]
                detail = f": {value:.3g} crossed {threshold:.3g} in the last {crossing['window']}"
            return Milestone(
                "alarm",
                f"drift alarm on {where} ({payload['kind']}){detail}",
                f"/models/{event['model']}?segment={self.segment}&window={self.window}",
            )
        if event["kind"] == "calibrator_promoted":
            return Milestone(
                "promoted",
                f"recalibrated {where}: promoted a {payload.get('method')} calibrator, "
                f"version {payload.get('version')}",
                f"/reports/{event['calibrator_id']}",
            )
        if event["kind"] == "calibrator_rejected":
            return Milestone(
                "refused",
                f"a candidate calibrator for {where} failed its validation gate (calmon keeps serving "
                "the old one, and tries again if the drift persists past its cooldown)",
                f"/reports/{event['calibrator_id']}",
            )
        return None


def metric_lines(text: str, model: str, segment: str, window: str) -> list[str]:
    """The /metrics lines a newcomer should look at for the drifting series."""
    wanted = re.compile(
        r"^calmon_(expected_calibration_error|drift_alarm)\{[^}]*\}",
    )
    lines = []
    for line in text.splitlines():
        ours = wanted.match(line) and f'model="{model}"' in line and f'segment="{segment}"' in line
        if ours and ("window=" not in line or f'window="{window}"' in line):
            lines.append(line)
    return lines
