"""approvals: endorsement keys and re-enrollments waiting for an operator

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("fingerprint", name="pk_approvals"),
    )
    op.create_index("ix_approvals_device_id", "approvals", ["device_id"])
    op.create_index("ix_approvals_state", "approvals", ["state"])


def downgrade() -> None:
    op.drop_index("ix_approvals_state", "approvals")
    op.drop_index("ix_approvals_device_id", "approvals")
    op.drop_table("approvals")
