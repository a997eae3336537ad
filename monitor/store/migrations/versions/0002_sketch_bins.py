"""Sketch buckets, the aggregation state of predictions, scheduler leases, evaluation snapshots.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNAGGREGATED = "agg_state = 0 OR (agg_state = 1 AND correct IS NOT NULL)"
MOMENTS = ("n", "sum_p", "n_l", "s1", "s2", "s3", "s4", "sy", "syp", "sll")
Time = sa.Float(precision=53)


def upgrade() -> None:
    op.add_column(
        "predictions", sa.Column("agg_state", sa.SmallInteger, nullable=False, server_default=sa.text("0"))
    )
    op.create_index(
        "ix_predictions_unaggregated",
        "predictions",
        ["pk"],
        sqlite_where=sa.text(UNAGGREGATED),
        postgresql_where=sa.text(UNAGGREGATED),
    )
    op.create_table(
        "sketch_bins",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("score", sa.String(16), nullable=False),
        sa.Column("bucket_start", Time, nullable=False),
        sa.Column("bin", sa.Integer, nullable=False),
        *(sa.Column(name, Time, nullable=False) for name in MOMENTS),
        sa.PrimaryKeyConstraint("model", "segment", "score", "bucket_start", "bin", name="pk_sketch_bins"),
    )
    op.create_index("ix_sketch_bins_bucket_start", "sketch_bins", ["bucket_start"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "snapshots",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_snapshots"),
    )


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_table("leases")
    op.drop_table("sketch_bins")
    op.drop_index("ix_predictions_unaggregated", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("agg_state")
