"""Messaging tables: the Matrix homeserver's devices, tokens, rooms, events, keys and inboxes.

Every change a client may sync is stamped with one global ``stream`` position, allocated from
``matrix_stream`` in the writing transaction (so commit order is stream order on both backends).
Contents are stored as the JSON the clients sent: ciphertext for encrypted rooms.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime


class StreamCounter(Base):
    __tablename__ = "matrix_stream"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True)
    pos: Mapped[int] = mapped_column(BigInteger())


class Device(Base):
    __tablename__ = "matrix_devices"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    last_seen_ip: Mapped[str | None] = mapped_column(String(64))
    last_seen_ts: Mapped[int | None] = mapped_column(BigInteger())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccessToken(Base):
    """Only the SHA-256 of a token is stored."""

    __tablename__ = "matrix_access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    device_id: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_matrix_access_tokens_user_device", "user_id", "device_id"),)


class Room(Base):
    __tablename__ = "matrix_rooms"

    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    creator: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Event(Base):
    __tablename__ = "matrix_events"

    stream: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    room_id: Mapped[str] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(255))
    state_key: Mapped[str | None] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text())
    origin_server_ts: Mapped[int] = mapped_column(BigInteger())
    redacted_because: Mapped[str | None] = mapped_column(Text())
    txn_device: Mapped[str | None] = mapped_column(String(64))
    txn_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_matrix_events_room_stream", "room_id", "stream"),
        Index("ix_matrix_events_txn", "sender", "txn_device", "txn_id"),
    )


class CurrentState(Base):
    __tablename__ = "matrix_current_state"

    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255), primary_key=True)
    state_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    stream: Mapped[int] = mapped_column(BigInteger())


class Membership(Base):
    """Current membership of a user in a room, with the stream range whose events they may see."""

    __tablename__ = "matrix_memberships"

    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    membership: Mapped[str] = mapped_column(String(16))
    stream: Mapped[int] = mapped_column(BigInteger())
    visible_from: Mapped[int] = mapped_column(BigInteger())
    forgotten: Mapped[bool] = mapped_column(Boolean(), default=False)

    __table_args__ = (Index("ix_matrix_memberships_user", "user_id", "membership"),)


class DeviceKeys(Base):
    __tablename__ = "matrix_device_keys"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    keys: Mapped[str] = mapped_column(Text())


class OneTimeKey(Base):
    __tablename__ = "matrix_one_time_keys"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255))
    device_id: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(128))
    key_json: Mapped[str] = mapped_column(Text())

    __table_args__ = (
        UniqueConstraint("user_id", "device_id", "algorithm", "key_id"),
        Index("ix_matrix_otk_device_alg", "user_id", "device_id", "algorithm", "id"),
    )


class FallbackKey(Base):
    __tablename__ = "matrix_fallback_keys"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128))
    key_json: Mapped[str] = mapped_column(Text())
    used: Mapped[bool] = mapped_column(Boolean(), default=False)


class DeviceListChange(Base):
    """The devices or cross-signing keys of ``user_id`` changed at ``stream``: users who share a
    room with them re-query their keys. A change with an ``audience`` (a user-signing signature
    of ``user_id`` made by the audience) concerns only that user."""

    __tablename__ = "matrix_device_list_changes"

    stream: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    audience: Mapped[str | None] = mapped_column(String(255))


class CrossSigningKey(Base):
    """A user's current cross-signing key of one usage (master, self_signing, user_signing):
    ``key_id`` is its unpadded-base64 Ed25519 public key, ``key_json`` the object as uploaded."""

    __tablename__ = "matrix_cross_signing_keys"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    usage: Mapped[str] = mapped_column(String(16), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128))
    key_json: Mapped[str] = mapped_column(Text())


class CrossSigningSignature(Base):
    """A signature uploaded through ``keys/signatures/upload``, made by ``origin_user_id``'s
    key ``origin_key_id`` (``ed25519:<key>``) over ``target_user_id``'s device (``target_key_id``
    a device id) or master key (``target_key_id`` its public key)."""

    __tablename__ = "matrix_cross_signing_signatures"

    origin_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    origin_key_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    target_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    target_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    signature: Mapped[str] = mapped_column(Text())

    __table_args__ = (
        Index("ix_matrix_cross_signing_signatures_target", "target_user_id", "target_key_id"),
    )


class RoomKeyBackup(Base):
    """One version of a user's server-side key backup (``room_keys/version``). A deleted
    version keeps its row (``deleted``, its keys gone) so that its number is never handed out
    again and deleting it twice succeeds, as the spec asks. ``etag`` counts the changes of its
    keys and ``key_count`` counts them (both kept in the transactions that change the keys,
    under this row's lock); ``auth_data`` is the JSON the client sent (the backup's public key
    and signatures)."""

    __tablename__ = "matrix_room_key_backups"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    algorithm: Mapped[str] = mapped_column(String(255))
    auth_data: Mapped[str] = mapped_column(Text())
    etag: Mapped[int] = mapped_column(BigInteger())
    key_count: Mapped[int] = mapped_column(BigInteger())
    deleted: Mapped[bool] = mapped_column(Boolean())


class RoomKeyBackupKey(Base):
    """One Megolm session's key in a backup version. ``session_data`` is the JSON the client
    sent, encrypted by the client to the backup's public key: the server never reads it."""

    __tablename__ = "matrix_room_key_backup_keys"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_message_index: Mapped[int] = mapped_column(BigInteger())
    forwarded_count: Mapped[int] = mapped_column(BigInteger())
    is_verified: Mapped[bool] = mapped_column(Boolean())
    session_data: Mapped[str] = mapped_column(Text())


class ToDevice(Base):
    __tablename__ = "matrix_to_device"

    stream: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    user_id: Mapped[str] = mapped_column(String(255))
    device_id: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text())

    __table_args__ = (Index("ix_matrix_to_device_inbox", "user_id", "device_id", "stream"),)


class ToDeviceTxn(Base):
    __tablename__ = "matrix_to_device_txns"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    txn_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class AccountData(Base):
    __tablename__ = "matrix_account_data"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # "" = global
    type: Mapped[str] = mapped_column(String(255), primary_key=True)
    content: Mapped[str] = mapped_column(Text())
    stream: Mapped[int] = mapped_column(BigInteger())

    __table_args__ = (Index("ix_matrix_account_data_user_stream", "user_id", "stream"),)


class Profile(Base):
    __tablename__ = "matrix_profiles"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    displayname: Mapped[str | None] = mapped_column(String(255))
    avatar_url: Mapped[str | None] = mapped_column(String(512))


class Filter(Base):
    __tablename__ = "matrix_filters"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    definition: Mapped[str] = mapped_column(Text())


class Media(Base):
    __tablename__ = "matrix_media"

    media_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    uploader: Mapped[str] = mapped_column(String(255), index=True)
    content_type: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger())
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MediaRoom(Base):
    """A room in which a media item was shared: its members may download it."""

    __tablename__ = "matrix_media_rooms"

    media_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
