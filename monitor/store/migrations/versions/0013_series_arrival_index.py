"""The predictions' series index keys on arrival (``pk``) instead of the client's ``ts``.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Builds the new index before dropping the old one: a series read never lacks an index.
    op.create_index("ix_predictions_segment_model_pk", "predictions", ["segment", "model", "pk"])
    op.drop_index("ix_predictions_model_segment_ts", table_name="predictions")


def downgrade() -> None:
    op.create_index("ix_predictions_model_segment_ts", "predictions", ["model", "segment", "ts"])
    op.drop_index("ix_predictions_segment_model_pk", table_name="predictions")
