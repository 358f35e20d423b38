"""revocations: device certificates nobody may use again, the source of the fleet CRL

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("revoked_by", sa.String(128), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
        sa.UniqueConstraint("serial", name="uq_revocations_serial"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_revocations_device_id", "revocations", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_revocations_device_id", "revocations")
    op.drop_table("revocations")
