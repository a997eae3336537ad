"""``calmon replay``: a recorded history through the real daemon on a simulated clock.

Every record says when it reached calmon (``at``) and what it was (``type``: ``prediction`` with the
fields of ``POST /v1/predictions``, ``ts`` required; ``feedback`` with those of ``POST /v1/feedback``).
A scratch SQLite database gets the records through the same services the API calls, in ``at``
order; every ``evaluation.interval_seconds`` of simulated time the real evaluation tick runs (fold,
windows, detectors, policy, rollbacks) and then every queued recalibration (fit, gate, promote), so
each decision is the one the daemon would have taken. Nothing sleeps: a month replays in minutes.
This is how a user tunes ``drift.tolerance`` and ``drift.false_alarm_every`` on their own history
before going live, and how ``benchmarks/drift.py`` compares drift policies.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from monitor.app import Daemon, build
from monitor.collector.errors import ApiError
from monitor.config import Settings
from monitor.evaluation.snapshot import Snapshot
from monitor.recalibration.job import Outcome
from monitor.store.engine import create_store_engine
from monitor.store.events import list_events
from monitor.store.migrate import upgrade

__all__ = ["ReplayInputError", "SimulatedClock", "read_history", "render_markdown", "replay"]

TYPES = ("prediction", "feedback")


class ReplayInputError(ValueError):
    """A history record that cannot be replayed: names the record (line or row) and the field."""


@dataclass
class SimulatedClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a ``.jsonl``, ``.csv`` or ``.parquet`` history, each with ``at`` and ``type``,
    stably sorted by ``at`` (records with the same ``at`` keep their order)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = list(_jsonl(path))
    elif suffix in (".csv", ".parquet"):
        records = _table(path, suffix)
    else:
        raise ReplayInputError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")
    for number, record in enumerate(records, 1):
        _check(record, number)
    return sorted(records, key=lambda r: float(r["at"]))


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ReplayInputError(f"record {number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ReplayInputError(f"record {number}: not a JSON object")
            yield record


def _table(path: Path, suffix: str) -> list[dict[str, Any]]:
    import pandas as pd

    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise ReplayInputError("reading parquet needs pyarrow (a dependency of calmon)") from None
    else:
        frame = pd.read_csv(path)
    out: list[dict[str, Any]] = []
    for row in frame.to_dict(orient="records"):
        record = {k: _plain(v) for k, v in row.items() if not _missing(v)}
        out.append(record)
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _check(record: dict[str, Any], number: int) -> None:
    at = record.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ReplayInputError(f"record {number}: field 'at' must be epoch seconds, got {at!r}")
    if record.get("type") not in TYPES:
        raise ReplayInputError(
            f"record {number}: field 'type' must be one of {TYPES}, got {record.get('type')!r}"
        )
    if record["type"] == "prediction" and "ts" not in record:
        raise ReplayInputError(f"record {number}: field 'ts' is required on a prediction")


@dataclass
class _Decisions:
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    recalibrations: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    last_event: int = 0

    def as_dict(self, settings: Settings, evaluations_run: int) -> dict[str, Any]:
        return {
            "settings": {
                "drift": settings.drift.model_dump(),
                "evaluation": settings.evaluation.model_dump(),
            },
            "evaluations_run": evaluations_run,
            "evaluations": self.evaluations,
            "events": self.events,
            "recalibrations": self.recalibrations,
            "rejected": self.rejected,
        }


def replay(
    settings: Settings,
    records: list[dict[str, Any]],
    *,
    evaluations: bool = True,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run ``records`` (sorted by ``at``) through a scratch daemon; every decision with its numbers."""
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        # A replay notifies nobody, and its scratch database needs no durability.
        database = settings.database.model_copy(update={"sqlite_synchronous": "OFF"})
        settings = settings.model_copy(update={"notifications": [], "database": database})
        engine = create_store_engine(f"sqlite:///{Path(scratch) / 'replay.db'}", settings.database)
        try:
            upgrade(engine)
            clock = SimulatedClock(float(records[0]["at"]) if records else 0.0)
            daemon = build(
                settings, clock=clock, instance_id="replay", engine=engine, render_exposition=False
            )
            decisions = _Decisions()
            count = _run(daemon, settings, records, clock, decisions, evaluations)
            return decisions.as_dict(settings, count)
        finally:
            engine.dispose()


def _run(
    daemon: Daemon,
    settings: Settings,
    records: list[dict[str, Any]],
    clock: SimulatedClock,
    decisions: _Decisions,
    evaluations: bool,
) -> int:
    interval = settings.evaluation.interval_seconds
    if not records:
        return 0
    at = float(records[0]["at"]) + interval
    end = float(records[-1]["at"]) + interval
    position, count = 0, 0
    while at <= end + 1e-9:
        position = _ingest_until(daemon, settings, records, position, at, clock, decisions)
        clock.now = at
        daemon.scheduler.renew_lease()
        daemon.scheduler.reconcile_once()
        snapshot = daemon.scheduler.evaluate_once()
        outcomes = daemon.queue.drain()
        count += 1
        if evaluations:
            decisions.evaluations.extend(_evaluation_rows(snapshot, settings))
        decisions.recalibrations.extend(_recalibration_row(at, o) for o in outcomes)
        _collect_events(daemon, decisions)
        at += interval
    return count


def _ingest_until(
    daemon: Daemon,
    settings: Settings,
    records: list[dict[str, Any]],
    position: int,
    until: float,
    clock: SimulatedClock,
    decisions: _Decisions,
) -> int:
    """Send every record with ``at <= until``: the predictions of the interval, then its feedback, in
    ``at`` order within each and in batches of ``limits.max_batch_records``. Nothing between two
    evaluations can observe the order inside the interval except feedback that overtakes its
    prediction, which this order delivers as matched instead of pending."""
    end = position
    while end < len(records) and float(records[end]["at"]) <= until:
        end += 1
    for kind in TYPES:
        chosen = [r for r in records[position:end] if r["type"] == kind]
        for start in range(0, len(chosen), settings.limits.max_batch_records):
            chunk = chosen[start : start + settings.limits.max_batch_records]
            clock.now = float(chunk[-1]["at"])
            _send(
                daemon,
                kind,
                [{k: v for k, v in r.items() if k not in ("at", "type")} for r in chunk],
                clock.now,
                decisions,
            )
    return end


def _send(daemon: Daemon, kind: str, batch: list[dict[str, Any]], now: float, decisions: _Decisions) -> None:
    services = daemon.app.state.context.services
    body = orjson.dumps({"predictions" if kind == "prediction" else "feedback": batch})
    try:
        result = services.ingest_predictions(body) if kind == "prediction" else services.ingest_feedback(body)
    except ApiError as exc:
        decisions.rejected.append({"at": now, "type": kind, "records": len(batch), "error": exc.message})
        return
    for rejected in result.get("rejected", []) or []:
        decisions.rejected.append({"at": now, "type": kind, **rejected})


def _evaluation_rows(snapshot: Snapshot, settings: Settings) -> list[dict[str, Any]]:
    first = settings.evaluation.windows[0]
    evidence = {(e["model"], e["segment"], e["score"]): e for e in snapshot.evidence}
    rows = []
    for s in snapshot.stats:
        if s.window != first:
            continue
        found = evidence.get((s.model, s.segment, s.score))
        rows.append(
            {
                "at": snapshot.created_at,
                "model": s.model,
                "segment": s.segment,
                "score": s.score,
                "labelled": s.labelled,
                "ece": s.ece,
                "evidence": found["log10_evidence"] if found else None,
                "alarm": bool(found["alarm"]) if found else False,
            }
        )
    return rows


def _recalibration_row(at: float, outcome: Outcome) -> dict[str, Any]:
    report = outcome.report
    data = report.get("data", {})
    gate = report.get("gate") or {}
    return {
        "at": at,
        "model": outcome.model,
        "segment": outcome.segment,
        "outcome": str(outcome.outcome),
        "method": report.get("chosen"),
        "params": next(
            (c["params"] for c in report.get("candidates", []) if c["method"] == report.get("chosen")), None
        ),
        "reason": outcome.reason,
        "since": data.get("since"),
        "fit_from": data.get("fit_start"),
        "fit_to": data.get("fit_end"),
        "validation_ece_before": (gate.get("active") or {}).get("ece"),
        "validation_ece_after": (gate.get("candidate") or {}).get("ece"),
    }


def _collect_events(daemon: Daemon, decisions: _Decisions) -> None:
    with daemon.engine.connect() as conn:
        found: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            page = list_events(conn, limit=1000, before_id=before)
            fresh = [e for e in page if e["id"] > decisions.last_event]
            found.extend(fresh)
            if len(fresh) < len(page) or not page:
                break
            before = page[-1]["id"]
        conn.rollback()
    for event in sorted(found, key=lambda e: e["id"]):
        decisions.last_event = max(decisions.last_event, event["id"])
        payload = dict(event["payload"])
        if "kind" in payload:  # a drift event's kind of drift
            payload["drift_kind"] = payload.pop("kind")
        decisions.events.append(
            {
                "at": event["ts"],
                "kind": event["kind"],
                "model": event["model"],
                "segment": event["segment"],
                **payload,
            }
        )


def render_markdown(decisions: dict[str, Any]) -> str:
    """A short human summary of a replay's decisions."""
    lines = ["# calmon replay", "", f"Evaluations run: {decisions['evaluations_run']}", ""]
    drift = decisions["settings"]["drift"]
    lines += [
        f"Policy `{drift['policy']}`, tolerance {drift['tolerance']}, "
        f"false_alarm_every {drift['false_alarm_every']}.",
        "",
        "## Events",
        "",
        "| at | kind | model | segment | detail |",
        "|---|---|---|---|---|",
    ]
    for e in decisions["events"]:
        detail = e.get("reason") or (f"change point {e['change_point']:.0f}" if e.get("change_point") else "")
        lines.append(f"| {e['at']:.0f} | {e['kind']} | {e['model']} | {e['segment']} | {detail} |")
    lines += [
        "",
        "## Recalibrations",
        "",
        "| at | model | segment | outcome | method | ECE before | ECE after |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for r in decisions["recalibrations"]:
        before, after = r["validation_ece_before"], r["validation_ece_after"]
        lines.append(
            f"| {r['at']:.0f} | {r['model']} | {r['segment']} | {r['outcome']} | {r['method'] or ''} | "
            f"{'' if before is None else f'{before:.4f}'} | {'' if after is None else f'{after:.4f}'} |"
        )
    if decisions["rejected"]:
        lines += ["", f"{len(decisions['rejected'])} record batches or records were rejected (see the JSON)."]
    return "\n".join(lines) + "\n"
