"""Lifetime totals per (model, series segment) for the model endpoints (``store.totals``).

Filled here from the raw-score sketch buckets (no bucket holds tail rows yet: the tail arrives with
this release, whose fold runs after its migrations); first and last times from the buckets' starts
(the fold keeps them exact from then on).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Number = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "series_totals",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("predictions", Number, nullable=False),
        sa.Column("labelled", Number, nullable=False),
        sa.Column("correct", Number, nullable=False),
        sa.Column("confidence_sum_labelled", Number, nullable=False),
        sa.Column("first_ts", Number),
        sa.Column("last_ts", Number),
        sa.PrimaryKeyConstraint("model", "segment", name="pk_series_totals"),
    )
    op.execute(
        "INSERT INTO series_totals "
        "(model, segment, predictions, labelled, correct, confidence_sum_labelled, first_ts, last_ts) "
        "SELECT model, segment, SUM(n), SUM(n_l), SUM(sy), SUM(s1), MIN(bucket_start), MAX(bucket_start) "
        "FROM sketch_bins WHERE score = 'raw' GROUP BY model, segment"
    )


def downgrade() -> None:
    op.drop_table("series_totals")
