"""Sketch batches from outside calmon (``POST /v1/sketches``) and the training sample they bring.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Number = sa.Float(precision=53)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "sketch_batches",
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("received_at", Number, nullable=False),
        sa.Column("folded_at", Number),
        sa.Column("first_bucket", Number, nullable=False),
        sa.Column("last_bucket", Number, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_sketch_batches"),
    )
    op.create_index("ix_sketch_batches_folded_at", "sketch_batches", ["folded_at"])
    op.create_table(
        "training_sample",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("ts", Number, nullable=False),
        sa.Column("raw_confidence", Number, nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_training_sample"),
    )
    op.create_index("ix_training_sample_model_segment_ts", "training_sample", ["model", "segment", "ts"])
    op.create_index("ix_training_sample_ts", "training_sample", ["ts"])


def downgrade() -> None:
    op.drop_table("training_sample")
    op.drop_table("sketch_batches")
