"""Index the event log by kind, for the latest calibrator change per series (every evaluation).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_kind_model_segment_ts", "events", ["kind", "model", "segment", "ts"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_model_segment_ts", table_name="events")
