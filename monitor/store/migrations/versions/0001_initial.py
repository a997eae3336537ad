"""Initial schema: predictions, pending feedback, feedback conflicts, calibrators, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Float(precision=53)
Name = sa.String(256)


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", Name, nullable=False),
        sa.Column("prediction_id", Name, nullable=False),
        sa.Column("segment", Name, nullable=False),
        sa.Column("ts", Time, nullable=False),
        sa.Column("received_at", Time, nullable=False),
        sa.Column("input_kind", sa.String(16), nullable=False),
        sa.Column("raw_confidence", Time, nullable=False),
        sa.Column("predicted", Name),
        sa.Column("vector", sa.LargeBinary),
        sa.Column("calibrated_confidence", Time, nullable=False),
        sa.Column("calibrator_version", sa.String(64), nullable=False),
        sa.Column("correct", sa.Boolean),
        sa.Column("label", Name),
        sa.Column("labelled_at", Time),
        sa.PrimaryKeyConstraint("pk", name="pk_predictions"),
        sa.UniqueConstraint("model", "prediction_id", name="uq_predictions_model_prediction_id"),
    )
    op.create_index("ix_predictions_model_segment_ts", "predictions", ["model", "segment", "ts"])

    op.create_table(
        "pending_feedback",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", Name, nullable=False),
        sa.Column("prediction_id", Name, nullable=False),
        sa.Column("correct", sa.Boolean),
        sa.Column("label", Name),
        sa.Column("received_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_pending_feedback"),
        sa.UniqueConstraint("model", "prediction_id", name="uq_pending_feedback_model_prediction_id"),
    )
    op.create_index("ix_pending_feedback_received_at", "pending_feedback", ["received_at"])

    op.create_table(
        "feedback_conflicts",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", Name, nullable=False),
        sa.Column("prediction_id", Name, nullable=False),
        sa.Column("kept_correct", sa.Boolean),
        sa.Column("kept_label", Name),
        sa.Column("rejected_correct", sa.Boolean),
        sa.Column("rejected_label", Name),
        sa.Column("received_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_feedback_conflicts"),
    )
    op.create_index(
        "ix_feedback_conflicts_model_prediction_id", "feedback_conflicts", ["model", "prediction_id"]
    )

    op.create_table(
        "calibrators",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model", Name, nullable=False),
        sa.Column("segment", Name, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("fit_start", Time),
        sa.Column("fit_end", Time),
        sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("activated_at", Time),
        sa.PrimaryKeyConstraint("id", name="pk_calibrators"),
        sa.UniqueConstraint("model", "segment", "version", name="uq_calibrators_model_segment_version"),
    )
    op.create_index(
        "uq_calibrators_one_active",
        "calibrators",
        ["model", "segment"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )

    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts", Time, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("model", Name),
        sa.Column("segment", Name),
        sa.Column("calibrator_id", BigId),
        sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(
            ["calibrator_id"], ["calibrators.id"], name="fk_events_calibrator_id_calibrators"
        ),
    )
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_events_model_ts", "events", ["model", "ts"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("calibrators")
    op.drop_table("feedback_conflicts")
    op.drop_table("pending_feedback")
    op.drop_table("predictions")
