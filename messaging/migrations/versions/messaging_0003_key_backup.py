"""Messaging: server-side room key backups (versions and their Megolm session keys)

Revision ID: messaging_0003
Revises: messaging_0002
Create Date: 2026-11-27 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "messaging_0003"
down_revision = "messaging_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "matrix_room_key_backups",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("algorithm", sa.String(length=255), nullable=False),
        sa.Column("auth_data", sa.Text(), nullable=False),
        sa.Column("etag", sa.BigInteger(), nullable=False),
        sa.Column("key_count", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version", name=op.f("pk_matrix_room_key_backups")),
    )
    op.create_table(
        "matrix_room_key_backup_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("first_message_index", sa.BigInteger(), nullable=False),
        sa.Column("forwarded_count", sa.BigInteger(), nullable=False),
        sa.Column("is_verified", sa.Boolean(), nullable=False),
        sa.Column("session_data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id",
            "version",
            "room_id",
            "session_id",
            name=op.f("pk_matrix_room_key_backup_keys"),
        ),
    )


def downgrade() -> None:
    op.drop_table("matrix_room_key_backup_keys")
    op.drop_table("matrix_room_key_backups")
