"""Messaging: Matrix devices, tokens, rooms, events, keys, inboxes, media

Revision ID: messaging_0001
Revises:
Create Date: 2026-11-27 01:26:40.238685
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import konsil.db

revision = "messaging_0001"
down_revision = None
branch_labels = ("messaging",)
depends_on = None  # no foreign keys into kernel tables: an independent branch


def upgrade() -> None:
    op.create_table(
        "matrix_access_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_matrix_access_tokens")),
    )
    with op.batch_alter_table("matrix_access_tokens", schema=None) as batch_op:
        batch_op.create_index(
            "ix_matrix_access_tokens_user_device", ["user_id", "device_id"], unique=False
        )

    op.create_table(
        "matrix_account_data",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("stream", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "room_id", "type", name=op.f("pk_matrix_account_data")),
    )
    with op.batch_alter_table("matrix_account_data", schema=None) as batch_op:
        batch_op.create_index(
            "ix_matrix_account_data_user_stream", ["user_id", "stream"], unique=False
        )

    op.create_table(
        "matrix_current_state",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=False),
        sa.Column("stream", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "room_id", "type", "state_key", name=op.f("pk_matrix_current_state")
        ),
    )
    op.create_table(
        "matrix_device_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("keys", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name=op.f("pk_matrix_device_keys")),
    )
    op.create_table(
        "matrix_device_list_changes",
        sa.Column("stream", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_matrix_device_list_changes")),
    )
    with op.batch_alter_table("matrix_device_list_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_matrix_device_list_changes_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "matrix_devices",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("last_seen_ip", sa.String(length=64), nullable=True),
        sa.Column("last_seen_ts", sa.BigInteger(), nullable=True),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "device_id", name=op.f("pk_matrix_devices")),
    )
    with op.batch_alter_table("matrix_devices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_matrix_devices_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "matrix_events",
        sa.Column("stream", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("state_key", sa.String(length=255), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("origin_server_ts", sa.BigInteger(), nullable=False),
        sa.Column("redacted_because", sa.Text(), nullable=True),
        sa.Column("txn_device", sa.String(length=64), nullable=True),
        sa.Column("txn_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_matrix_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_matrix_events_event_id")),
    )
    with op.batch_alter_table("matrix_events", schema=None) as batch_op:
        batch_op.create_index("ix_matrix_events_room_stream", ["room_id", "stream"], unique=False)
        batch_op.create_index(
            "ix_matrix_events_txn", ["sender", "txn_device", "txn_id"], unique=False
        )

    op.create_table(
        "matrix_fallback_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id", "device_id", "algorithm", name=op.f("pk_matrix_fallback_keys")
        ),
    )
    op.create_table(
        "matrix_filters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matrix_filters")),
    )
    with op.batch_alter_table("matrix_filters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_matrix_filters_user_id"), ["user_id"], unique=False)

    op.create_table(
        "matrix_media",
        sa.Column("media_id", sa.String(length=64), nullable=False),
        sa.Column("uploader", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("media_id", name=op.f("pk_matrix_media")),
    )
    with op.batch_alter_table("matrix_media", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_matrix_media_uploader"), ["uploader"], unique=False)

    op.create_table(
        "matrix_media_rooms",
        sa.Column("media_id", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("media_id", "room_id", name=op.f("pk_matrix_media_rooms")),
    )
    op.create_table(
        "matrix_memberships",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("membership", sa.String(length=16), nullable=False),
        sa.Column("stream", sa.BigInteger(), nullable=False),
        sa.Column("visible_from", sa.BigInteger(), nullable=False),
        sa.Column("forgotten", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "user_id", name=op.f("pk_matrix_memberships")),
    )
    with op.batch_alter_table("matrix_memberships", schema=None) as batch_op:
        batch_op.create_index("ix_matrix_memberships_user", ["user_id", "membership"], unique=False)

    op.create_table(
        "matrix_one_time_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=128), nullable=False),
        sa.Column("key_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matrix_one_time_keys")),
        sa.UniqueConstraint(
            "user_id",
            "device_id",
            "algorithm",
            "key_id",
            name=op.f("uq_matrix_one_time_keys_user_id_device_id_algorithm_key_id"),
        ),
    )
    with op.batch_alter_table("matrix_one_time_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_matrix_otk_device_alg", ["user_id", "device_id", "algorithm", "id"], unique=False
        )

    op.create_table(
        "matrix_profiles",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("displayname", sa.String(length=255), nullable=True),
        sa.Column("avatar_url", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_matrix_profiles")),
    )
    op.create_table(
        "matrix_rooms",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("creator", sa.String(length=255), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_matrix_rooms")),
    )
    op.create_table(
        "matrix_stream",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_matrix_stream")),
    )
    # The one global stream position: every syncable change takes the next value.
    op.execute("INSERT INTO matrix_stream (id, pos) VALUES (1, 0)")
    op.create_table(
        "matrix_to_device",
        sa.Column("stream", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_matrix_to_device")),
    )
    with op.batch_alter_table("matrix_to_device", schema=None) as batch_op:
        batch_op.create_index(
            "ix_matrix_to_device_inbox", ["user_id", "device_id", "stream"], unique=False
        )

    op.create_table(
        "matrix_to_device_txns",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id", "device_id", "txn_id", name=op.f("pk_matrix_to_device_txns")
        ),
    )


def downgrade() -> None:
    op.drop_table("matrix_to_device_txns")
    with op.batch_alter_table("matrix_to_device", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_to_device_inbox")

    op.drop_table("matrix_to_device")
    op.drop_table("matrix_stream")
    op.drop_table("matrix_rooms")
    op.drop_table("matrix_profiles")
    with op.batch_alter_table("matrix_one_time_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_otk_device_alg")

    op.drop_table("matrix_one_time_keys")
    with op.batch_alter_table("matrix_memberships", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_memberships_user")

    op.drop_table("matrix_memberships")
    op.drop_table("matrix_media_rooms")
    with op.batch_alter_table("matrix_media", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matrix_media_uploader"))

    op.drop_table("matrix_media")
    with op.batch_alter_table("matrix_filters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matrix_filters_user_id"))

    op.drop_table("matrix_filters")
    op.drop_table("matrix_fallback_keys")
    with op.batch_alter_table("matrix_events", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_events_txn")
        batch_op.drop_index("ix_matrix_events_room_stream")

    op.drop_table("matrix_events")
    with op.batch_alter_table("matrix_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matrix_devices_account_id"))

    op.drop_table("matrix_devices")
    with op.batch_alter_table("matrix_device_list_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_matrix_device_list_changes_user_id"))

    op.drop_table("matrix_device_list_changes")
    op.drop_table("matrix_device_keys")
    op.drop_table("matrix_current_state")
    with op.batch_alter_table("matrix_account_data", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_account_data_user_stream")

    op.drop_table("matrix_account_data")
    with op.batch_alter_table("matrix_access_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_matrix_access_tokens_user_device")

    op.drop_table("matrix_access_tokens")
