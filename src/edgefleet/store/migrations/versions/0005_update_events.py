"""update_events: the A/B update history of every device

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "update_events",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.String(32), nullable=False),
        sa.Column("release", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(1000), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "seq", name="pk_update_events"),
    )


def downgrade() -> None:
    op.drop_table("update_events")
