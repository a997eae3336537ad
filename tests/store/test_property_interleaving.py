"""Property: any interleaving and batching of predictions, feedback, duplicates and early feedback
ends in the same stored state, the one the feedback rules define."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from monitor.store.schema import feedback_conflicts, fold_queue, pending_feedback, predictions

# A fixed world: each id has one prediction and one true feedback value; ids 5.. are never predicted.
WORLD: dict[str, dict[str, Any]] = {
    f"p{i}": {
        "confidence": round(0.05 + 0.09 * i, 3),
        "predicted": "cat" if i % 2 else None,
        "feedback": {"label": "cat" if i % 3 else "dog"} if i % 2 else {"correct": i % 3 == 0},
        "predicted_ever": i < 5,
    }
    for i in range(7)
}


def expected_state() -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    rows, pending = set(), set()
    for pid, spec in WORLD.items():
        fb = spec["feedback"]
        if spec["predicted_ever"]:
            correct = fb["correct"] if "correct" in fb else fb["label"] == spec["predicted"]
            rows.add((pid, spec["confidence"], spec["predicted"], correct, fb.get("label")))
        else:
            pending.add((pid, fb.get("correct"), fb.get("label")))
    return rows, pending


@st.composite
def schedules(draw: st.DrawFn) -> list[list[tuple[str, str]]]:
    ops: list[tuple[str, str]] = []
    for pid, spec in WORLD.items():
        if spec["predicted_ever"]:
            ops += [("prediction", pid)] * draw(st.integers(1, 2))
        ops += [("feedback", pid)] * draw(st.integers(1, 3))
    ordered = draw(st.permutations(ops))
    cuts = sorted(draw(st.sets(st.integers(1, len(ordered) - 1), max_size=len(ordered) - 1)))
    batches, start = [], 0
    for cut in [*cuts, len(ordered)]:
        batches.append(list(ordered[start:cut]))
        start = cut
    return batches


def send(client: TestClient, batch: list[tuple[str, str]]) -> None:
    # A batch mixes kinds in the schedule; the API takes one kind per request, in schedule order.
    run: list[tuple[str, str]] = []
    for op in [*batch, ("end", "")]:
        if run and op[0] != run[0][0]:
            kind = run[0][0]
            if kind == "prediction":
                records = [
                    {
                        "model": "m",
                        "id": pid,
                        "confidence": WORLD[pid]["confidence"],
                        **({"predicted": WORLD[pid]["predicted"]} if WORLD[pid]["predicted"] else {}),
                    }
                    for _, pid in run
                ]
                response = client.post("/v1/predictions", json={"predictions": records})
            else:
                records = [{"model": "m", "id": pid, **WORLD[pid]["feedback"]} for _, pid in run]
                response = client.post("/v1/feedback", json={"feedback": records})
            assert response.status_code == 200, response.text
            run = []
        run.append(op)


def stored_state(engine: Engine) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]], int]:
    with engine.connect() as conn:
        rows = {
            (r.prediction_id, round(r.raw_confidence, 6), r.predicted, r.correct, r.label)
            for r in conn.execute(select(predictions))
        }
        pending = {(r.prediction_id, r.correct, r.label) for r in conn.execute(select(pending_feedback))}
        conflicts = len(conn.execute(select(feedback_conflicts)).all())
        return rows, pending, conflicts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedule=schedules())
def test_any_interleaving_ends_in_the_same_state(
    client: TestClient, engine: Engine, schedule: list[list[tuple[str, str]]]
) -> None:
    with engine.begin() as conn:
        for table in (fold_queue, predictions, pending_feedback, feedback_conflicts):
            conn.execute(delete(table))
    for batch in schedule:
        send(client, batch)
    rows, pending, conflicts = stored_state(engine)
    expected_rows, expected_pending = expected_state()
    assert rows == expected_rows
    assert pending == expected_pending
    assert conflicts == 0  # equal repeats are duplicates, never conflicts
