"""Remember which version a promotion replaced, so a rollback restores what served before.

``replaced_id``: the calibrator that was active when this one was activated; 0 when none was;
NULL for rows activated before this migration (rollback then falls back to the old rule).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calibrators") as batch:
        batch.add_column(sa.Column("replaced_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")))


def downgrade() -> None:
    with op.batch_alter_table("calibrators") as batch:
        batch.drop_column("replaced_id")
