"""attestation identities: an index on the endorsement key (each TPM enrollment looks up
which device holds an EK; without it the lookup read every identity)

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attestation_identities_ek_public", "attestation_identities", ["ek_public"])


def downgrade() -> None:
    op.drop_index("ix_attestation_identities_ek_public", "attestation_identities")
