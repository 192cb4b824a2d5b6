"""Messaging: cross-signing keys and signatures; device-list changes seen by one user only

Revision ID: messaging_0002
Revises: messaging_0001
Create Date: 2026-11-27 13:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "messaging_0002"
down_revision = "messaging_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "matrix_cross_signing_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("usage", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "usage", name=op.f("pk_matrix_cross_signing_keys")),
    )
    op.create_table(
        "matrix_cross_signing_signatures",
        sa.Column("origin_user_id", sa.String(length=255), nullable=False),
        sa.Column("origin_key_id", sa.String(length=255), nullable=False),
        sa.Column("target_user_id", sa.String(length=255), nullable=False),
        sa.Column("target_key_id", sa.String(length=128), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "origin_user_id",
            "origin_key_id",
            "target_user_id",
            "target_key_id",
            name=op.f("pk_matrix_cross_signing_signatures"),
        ),
    )
    with op.batch_alter_table("matrix_cross_signing_signatures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_matrix_cross_signing_signatures_target",
            ["target_user_id", "target_key_id"],
            unique=False,
        )
    with op.batch_alter_table("matrix_device_list_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audience", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("matrix_device_list_changes", schema=None) as batch_op:
        batch_op.drop_column("audience")
    with op.batch_alter_table("matrix_cross_signing_signatures", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_cross_signing_signatures_target")
    op.drop_table("matrix_cross_signing_signatures")
    op.drop_table("matrix_cross_signing_keys")
