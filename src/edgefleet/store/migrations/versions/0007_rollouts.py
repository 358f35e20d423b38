"""rollouts: rollouts with the planner's state, and their audit events

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("release", sa.String(128), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_index("ix_rollouts_status", "rollouts", ["status"])
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rollout_events_rollout_id", "rollout_events", ["rollout_id"])


def downgrade() -> None:
    op.drop_table("rollout_events")
    op.drop_table("rollouts")
