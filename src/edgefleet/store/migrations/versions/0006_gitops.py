"""gitops: accepted commits per sync, every processed commit, alerts, drift per device

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gitops_syncs",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("accepted_commit", sa.String(64), nullable=False),
        sa.Column("accepted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_gitops_syncs"),
    )
    op.create_table(
        "gitops_commits",
        sa.Column("sync", sa.String(64), nullable=False),
        sa.Column("commit_sha", sa.String(64), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sync", "commit_sha", "accepted", name="pk_gitops_commits"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_kind", "alerts", ["kind"])
    op.create_table(
        "drift_status",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("differences", sa.JSON(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("heals", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_drift_status"),
    )


def downgrade() -> None:
    for table in ("drift_status", "alerts", "gitops_commits", "gitops_syncs"):
        op.drop_table(table)
