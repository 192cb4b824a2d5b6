"""The RCP service account gets the role ``service`` (it was stored as a practitioner).

Revision ID: rcp_0004
Revises: rcp_0003
Create Date: 2026-11-27 10:50:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "rcp_0004"
down_revision = "rcp_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only the account RCP created itself: no password, no practitioner record.
    op.execute(
        "UPDATE accounts SET role = 'service' WHERE username = 'konsil' "
        "AND password_hash IS NULL AND practitioner_id IS NULL AND role = 'practitioner'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE accounts SET role = 'practitioner' WHERE username = 'konsil' AND role = 'service'"
    )
