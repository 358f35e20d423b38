"""devices.next_cert_serial: a renewed certificate not presented yet

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("next_cert_serial", sa.String(64), nullable=True))
        batch.add_column(sa.Column("next_cert_not_after", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("next_cert_not_after")
        batch.drop_column("next_cert_serial")
