"""attestation: TPM identities, nonces, last verdict per device

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from edgefleet.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attestation_identities",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("ek_public", sa.LargeBinary(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("credential_digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_attestation_identities"),
    )
    op.create_table(
        "attestation_nonces",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("nonce", name="pk_attestation_nonces"),
    )
    op.create_index("ix_attestation_nonces_device_id", "attestation_nonces", ["device_id"])
    op.create_table(
        "attestation_status",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("attested_at", UTCDateTime(), nullable=False),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("release", sa.String(128), nullable=True),
        sa.Column("reset_count", sa.BigInteger(), nullable=False),
        sa.Column("restart_count", sa.BigInteger(), nullable=False),
        sa.Column("clock", sa.BigInteger(), nullable=False),
        sa.Column("quarantined", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_attestation_status"),
    )


def downgrade() -> None:
    op.drop_table("attestation_status")
    op.drop_index("ix_attestation_nonces_device_id", table_name="attestation_nonces")
    op.drop_table("attestation_nonces")
    op.drop_table("attestation_identities")
