"""Hourly coarse-bin sums of the sketch buckets, for the status page's history (``store.history``).

Created empty: the leader fills it from ``sketch_bins`` at its first evaluation, with the configured
``ece_bins`` (``history.ensure_hours``), since a migration does not know the configuration.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MOMENTS = ("n", "sum_p", "n_l", "s1", "s2", "s3", "s4", "sy", "syp", "sll")
Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "sketch_hours",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("score", sa.String(16), nullable=False),
        sa.Column("hour_start", Time, nullable=False),
        sa.Column("bins", sa.SmallInteger, nullable=False),
        sa.Column("bin", sa.SmallInteger, nullable=False),
        *(sa.Column(name, Time, nullable=False) for name in MOMENTS),
        sa.PrimaryKeyConstraint(
            "model", "segment", "score", "hour_start", "bins", "bin", name="pk_sketch_hours"
        ),
    )
    op.create_index("ix_sketch_hours_hour_start", "sketch_hours", ["hour_start"])


def downgrade() -> None:
    op.drop_table("sketch_hours")
