"""Decision reports of recalibration runs: one JSON body and its Markdown rendering per calibrator."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, insert, select

from monitor.store.schema import calibrator_reports

__all__ = ["load_report", "reported", "save_report"]


def save_report(
    conn: Connection, calibrator_id: int, now: float, body: dict[str, Any], markdown: str
) -> None:
    conn.execute(
        insert(calibrator_reports).values(
            calibrator_id=calibrator_id,
            created_at=now,
            body_json=orjson.dumps(body).decode(),
            body_markdown=markdown,
        )
    )


def load_report(conn: Connection, calibrator_id: int) -> tuple[dict[str, Any], str] | None:
    """The report (JSON body, Markdown) of the run that wrote ``calibrator_id``, if any."""
    row = conn.execute(
        select(calibrator_reports.c.body_json, calibrator_reports.c.body_markdown).where(
            calibrator_reports.c.calibrator_id == calibrator_id
        )
    ).first()
    return (orjson.loads(row.body_json), row.body_markdown) if row is not None else None


def reported(conn: Connection, calibrator_ids: list[int]) -> set[int]:
    """Which of these calibrators have a decision report (a page links only to those)."""
    if not calibrator_ids:
        return set()
    query = select(calibrator_reports.c.calibrator_id).where(
        calibrator_reports.c.calibrator_id.in_(calibrator_ids)
    )
    return {int(found) for found in conn.execute(query).scalars()}
