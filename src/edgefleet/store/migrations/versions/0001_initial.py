"""initial schema: devices, bootstrap tokens, admin tokens

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("hardware_id", sa.String(128), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("inventory", sa.JSON(), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("cert_not_after", UTCDateTime(), nullable=False),
        sa.Column("enrolled_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=True),
        sa.Column("status_seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=True),
        sa.Column("status_at", UTCDateTime(), nullable=True),
        sa.Column("running_version", sa.String(128), nullable=True),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("update_state", sa.String(32), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=False),
        sa.Column("desired_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("hardware_id", name="uq_devices_hardware_id"),
    )
    op.create_index("ix_devices_site", "devices", ["site"])
    op.create_table(
        "bootstrap_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bootstrap_tokens"),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_tokens"),
    )


def downgrade() -> None:
    op.drop_table("admin_tokens")
    op.drop_table("bootstrap_tokens")
    op.drop_index("ix_devices_site", table_name="devices")
    op.drop_table("devices")
