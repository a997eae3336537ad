"""The segments of each model in the order calmon first folded them: the one segment cap.

A model's first ``max_segments`` segments (by ``position``) keep their own series; later ones are
folded into ``other`` when their rows enter the sketch buckets, and evaluated, exported and counted
as ``other`` everywhere. Back-filled from the buckets already written, oldest first.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("model", "segment", name="pk_segments"),
    )
    op.execute(
        "INSERT INTO segments (model, segment, position) "
        "SELECT model, segment, "
        "ROW_NUMBER() OVER (PARTITION BY model ORDER BY MIN(bucket_start), segment) - 1 "
        "FROM sketch_bins WHERE segment <> 'other' GROUP BY model, segment"
    )


def downgrade() -> None:
    op.drop_table("segments")
