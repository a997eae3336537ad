"""The models calmon tracks, so ``limits.max_models`` can be enforced where series are created.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
    )
    op.execute(
        "INSERT INTO models (model, created_at) "
        "SELECT model, MIN(received_at) FROM predictions GROUP BY model"
    )


def downgrade() -> None:
    op.drop_table("models")
