"""hubs are enrolled as what they are: a kind on bootstrap tokens and devices

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bootstrap_tokens") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="device"))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="device"))
        batch.create_index("ix_devices_kind", ["kind"])


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_index("ix_devices_kind")
        batch.drop_column("kind")
    with op.batch_alter_table("bootstrap_tokens") as batch:
        batch.drop_column("kind")
