"""bootstrap tokens can be revoked before they are used

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bootstrap_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bootstrap_tokens") as batch:
        batch.drop_column("revoked_at")
