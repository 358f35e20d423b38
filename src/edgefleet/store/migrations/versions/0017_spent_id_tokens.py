"""spent_id_tokens: ID tokens the control plane exchanged for an admin token (each once)

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spent_id_tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("spent_id_tokens")
