"""Decision reports of recalibration runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrator_reports",
        sa.Column("calibrator_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("body_json", sa.Text, nullable=False),
        sa.Column("body_markdown", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("calibrator_id", name="pk_calibrator_reports"),
        sa.ForeignKeyConstraint(
            ["calibrator_id"], ["calibrators.id"], name="fk_calibrator_reports_calibrator_id_calibrators"
        ),
    )


def downgrade() -> None:
    op.drop_table("calibrator_reports")
