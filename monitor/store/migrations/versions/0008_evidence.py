"""The drift detectors: label sums waiting to be bet on, and each series' detector state.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_pending",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("score", sa.String(16), nullable=False),
        sa.Column("bucket_start", sa.Float(precision=53), nullable=False),
        sa.Column("bins", sa.SmallInteger, nullable=False),
        sa.Column("bin", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.Float(precision=53), nullable=False),
        sa.Column("d", sa.Float(precision=53), nullable=False),
        sa.Column("q", sa.Float(precision=53), nullable=False),
        sa.Column("tolerance", sa.Float(precision=53), nullable=False),
        sa.Column("g", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evidence_pending"),
    )
    op.create_table(
        "evidence",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("segment", sa.String(256), nullable=False),
        sa.Column("score", sa.String(16), nullable=False),
        sa.Column("epoch", sa.Float(precision=53), nullable=False),
        sa.Column("steps", sa.BigInteger, nullable=False),
        sa.Column("labels", sa.BigInteger, nullable=False),
        sa.Column("log_r", sa.LargeBinary, nullable=False),
        sa.Column("run_start", sa.LargeBinary, nullable=False),
        sa.Column("alarm_since", sa.Float(precision=53)),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("model", "segment", "score", name="pk_evidence"),
    )


def downgrade() -> None:
    op.drop_table("evidence")
    op.drop_table("evidence_pending")
