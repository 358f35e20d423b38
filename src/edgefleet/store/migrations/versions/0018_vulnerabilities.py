"""advisories (OSV), the packages they name, and VEX statements

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "advisories",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("modified", UTCDateTime(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("summary", sa.String(500), nullable=False),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("affected", sa.JSON(), nullable=False),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "advisory_packages",
        sa.Column("ecosystem", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("advisory_id", sa.String(128), primary_key=True),
    )
    op.create_table(
        "vex_statements",
        sa.Column("vulnerability", sa.String(128), primary_key=True),
        sa.Column("product", sa.String(512), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("justification", sa.String(500), nullable=False),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vex_statements")
    op.drop_table("advisory_packages")
    op.drop_table("advisories")
