"""Drop rcp_pending_publications: signed reports are published through the workflow outbox.

Revision ID: rcp_0002
Revises: rcp_0001
Create Date: 2026-11-27 02:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import konsil.db

revision = "rcp_0002"
down_revision = "rcp_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rcp_pending_publications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_pending_publications_case_id"))
    op.drop_table("rcp_pending_publications")


def downgrade() -> None:
    op.create_table(
        "rcp_pending_publications",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("queued_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("drained_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["rcp_cases.id"],
            name=op.f("fk_rcp_pending_publications_case_id_rcp_cases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_pending_publications")),
    )
    with op.batch_alter_table("rcp_pending_publications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rcp_pending_publications_case_id"), ["case_id"], unique=False
        )
