"""telemetry: records shipped by devices (de-duplicated by sequence number) and per-device streams

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_records",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("body", sa.String(16384), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "seq", name="pk_telemetry_records"),
    )
    op.create_table(
        "telemetry_streams",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("stored_through", sa.BigInteger(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("batches", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_telemetry_streams"),
    )


def downgrade() -> None:
    op.drop_table("telemetry_streams")
    op.drop_table("telemetry_records")
