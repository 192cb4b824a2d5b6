"""Server-side key backups (Client-Server API, end-to-end encryption module): a user's backup
versions (``room_keys/version``) and the Megolm session keys stored in them
(``room_keys/keys``), so that a new device can read the history of encrypted rooms.

The server stores what the client sends and never reads it: ``session_data`` is encrypted by
the client to the backup's public key (``m.megolm_backup.v1.curve25519-aes-sha2``), and is
neither logged nor audited. Backups belong to the user, not to a device: deleting a device
leaves them, and so does deactivating an account (in Konsil an administrator may reactivate
it, and the user's encrypted history must then still be readable).

Every change runs in one transaction holding the version's row (``FOR UPDATE`` on
PostgreSQL; SQLite serialises writers), which keeps its ``etag`` and ``key_count`` exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from konsil.audit.service import Actor, AuditLog
from konsil.db import Database
from konsil.errors import BadRequest, Forbidden, NotFound, TooLarge
from messaging.common import JsonDict, Requester, dumps, loads, retry_on_conflict
from messaging.cross_signing import unpadded_b64decode
from messaging.models import RoomKeyBackup, RoomKeyBackupKey

ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
MAX_ID_CHARS = 255
MAX_AUTH_DATA_CHARS = 16 * 1024  # auth_data as stored JSON
MAX_SESSION_DATA_CHARS = 16 * 1024  # one key's session_data (real ones are about 1 KiB)
MAX_JSON_INT = 2**53 - 1
MAX_KEYS_PER_USER = 500_000  # all live versions together: bounds what one user can store
MAX_LIVE_VERSIONS = 20  # versions not deleted, per user
_CHUNK = 500  # session ids per IN (...) query


# ---------------------------------------------------------------- checks


def parse_version(raw: str | None) -> int | None:
    """A backup version as we hand them out (a decimal number), else None (unknown)."""
    if raw is None or not raw.isdigit() or not raw.isascii() or len(raw) > 18:
        return None
    return int(raw)


def require_version(raw: str | None) -> str:
    """The required ``version`` query parameter of the ``room_keys/keys`` endpoints."""
    if raw is None or raw == "":
        raise BadRequest("the version query parameter is required", errcode="M_MISSING_PARAM")
    return raw


def check_auth_data(algorithm: Any, auth_data: Any) -> str:
    """``auth_data`` of a ``curve25519-aes-sha2`` backup as stored JSON: a Curve25519 public
    key (unpadded base64) and optional signatures; other fields are kept as sent."""
    if not isinstance(algorithm, str):
        raise BadRequest("algorithm must be a string", errcode="M_BAD_JSON")
    if algorithm != ALGORITHM:
        raise BadRequest(f"unsupported backup algorithm {algorithm!r}", errcode="M_INVALID_PARAM")
    if not isinstance(auth_data, dict):
        raise BadRequest("auth_data must be an object", errcode="M_BAD_JSON")
    public_key = auth_data.get("public_key")
    if not isinstance(public_key, str):
        raise BadRequest("auth_data.public_key must be a string", errcode="M_BAD_JSON")
    try:
        raw = unpadded_b64decode(public_key)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BadRequest(
            "auth_data.public_key is not a Curve25519 public key", errcode="M_INVALID_PARAM"
        )
    sigs = auth_data.get("signatures", {})
    if not isinstance(sigs, dict) or not all(
        isinstance(by, dict) and all(isinstance(v, str) for v in by.values())
        for by in sigs.values()
    ):
        raise BadRequest("auth_data.signatures is malformed", errcode="M_BAD_JSON")
    stored = dumps(auth_data)
    if len(stored) > MAX_AUTH_DATA_CHARS:
        raise TooLarge("auth_data is too large")
    return stored


@dataclass(frozen=True)
class BackupKey:
    """One session's ``KeyBackupData``; ``session_data`` as stored JSON."""

    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: str

    def better_than(self, other: BackupKey) -> bool:
        """The spec's rule: a verified key wins, then the lower first message index, then the
        lower forwarded count; an equal key does not replace the stored one."""
        if self.is_verified != other.is_verified:
            return self.is_verified
        if self.first_message_index != other.first_message_index:
            return self.first_message_index < other.first_message_index
        return self.forwarded_count < other.forwarded_count

    @classmethod
    def of(cls, row: RoomKeyBackupKey) -> BackupKey:
        return cls(row.first_message_index, row.forwarded_count, row.is_verified, row.session_data)

    def to_json(self) -> JsonDict:
        return {
            "first_message_index": self.first_message_index,
            "forwarded_count": self.forwarded_count,
            "is_verified": self.is_verified,
            "session_data": loads(self.session_data),
        }


def _count(obj: JsonDict, name: str) -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"{name} must be an integer", errcode="M_BAD_JSON")
    if not 0 <= v <= MAX_JSON_INT:
        raise BadRequest(f"{name} is out of range", errcode="M_INVALID_PARAM")
    return v


def check_key(obj: Any) -> BackupKey:
    if not isinstance(obj, dict):
        raise BadRequest("the key data must be an object", errcode="M_BAD_JSON")
    first, forwarded = _count(obj, "first_message_index"), _count(obj, "forwarded_count")
    verified = obj.get("is_verified")
    if not isinstance(verified, bool):
        raise BadRequest("is_verified must be a boolean", errcode="M_BAD_JSON")
    data = obj.get("session_data")
    if not isinstance(data, dict):
        raise BadRequest("session_data must be an object", errcode="M_BAD_JSON")
    stored = dumps(data)
    if len(stored) > MAX_SESSION_DATA_CHARS:
        raise TooLarge("session_data is too large")
    return BackupKey(first, forwarded, verified, stored)


def check_id(value: Any, what: str, *, room: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string", errcode="M_BAD_JSON")
    if len(value) > MAX_ID_CHARS or (room and not value.startswith("!")):
        raise BadRequest(f"{what} is not valid", errcode="M_INVALID_PARAM")
    return value


def check_sessions(obj: Any) -> dict[str, BackupKey]:
    """``{"sessions": {session id: KeyBackupData}}`` (one room's keys)."""
    sessions = obj.get("sessions") if isinstance(obj, dict) else None
    if not isinstance(sessions, dict):
        raise BadRequest("a room's keys must be an object with sessions", errcode="M_BAD_JSON")
    return {check_id(sid, "a session id"): check_key(key) for sid, key in sessions.items()}


Upload = dict[str, dict[str, BackupKey]]  # room id -> session id -> key


def check_upload(body: JsonDict, room_id: str | None, session_id: str | None) -> Upload:
    """The keys of a PUT on ``room_keys/keys``, ``…/{roomId}`` or ``…/{roomId}/{sessionId}``
    (their bodies: all rooms, one room's sessions, one session's key)."""
    if room_id is None:
        rooms = body.get("rooms")
        if not isinstance(rooms, dict):
            raise BadRequest("rooms must be an object", errcode="M_BAD_JSON")
        return {check_id(r, "a room id", room=True): check_sessions(v) for r, v in rooms.items()}
    room_id = check_id(room_id, "the room id", room=True)
    if session_id is None:
        return {room_id: check_sessions(body)}
    return {room_id: {check_id(session_id, "the session id"): check_key(body)}}


def _not_found() -> NotFound:
    return NotFound("Unknown backup version")


def _info(row: RoomKeyBackup) -> JsonDict:
    return {
        "algorithm": row.algorithm,
        "auth_data": loads(row.auth_data),
        "count": row.key_count,
        "etag": str(row.etag),
        "version": str(row.version),
    }


def _update_answer(row: RoomKeyBackup) -> JsonDict:
    return {"etag": str(row.etag), "count": row.key_count}


# ---------------------------------------------------------------- service


class KeyBackupService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        max_keys_per_user: int = MAX_KEYS_PER_USER,
        max_live_versions: int = MAX_LIVE_VERSIONS,
    ) -> None:
        self.db = db
        self.audit = audit
        self.max_keys_per_user = max_keys_per_user
        self.max_live_versions = max_live_versions

    @staticmethod
    async def _current(
        s: AsyncSession, user_id: str, *, lock: bool = False
    ) -> RoomKeyBackup | None:
        """The user's newest version that is not deleted."""
        q = (
            select(RoomKeyBackup)
            .where(RoomKeyBackup.user_id == user_id, RoomKeyBackup.deleted.is_(False))
            .order_by(RoomKeyBackup.version.desc())
            .limit(1)
        )
        return (await s.execute(q.with_for_update() if lock else q)).scalar_one_or_none()

    @staticmethod
    async def _version(
        s: AsyncSession, user_id: str, raw: str, *, lock: bool = False
    ) -> RoomKeyBackup:
        """An existing version of the user's (404 when unknown or deleted)."""
        version = parse_version(raw)
        row = (
            None
            if version is None
            else await s.get(RoomKeyBackup, (user_id, version), with_for_update=lock)
        )
        if row is None or row.deleted:
            raise _not_found()
        return row

    # ------------------------------------------------------------ versions

    async def do_create_version(
        self, req: Requester, body: JsonDict, *, ip: str | None
    ) -> JsonDict:
        auth_data = check_auth_data(body.get("algorithm"), body.get("auth_data"))

        async def create() -> JsonDict:
            async with self.db.transaction() as s:
                last, live = (
                    await s.execute(
                        select(
                            func.max(RoomKeyBackup.version),
                            func.count().filter(RoomKeyBackup.deleted.is_(False)),
                        ).where(RoomKeyBackup.user_id == req.user_id)
                    )
                ).one()
                if (live or 0) >= self.max_live_versions:
                    # (not M_LIMIT_EXCEEDED: clients retry that one)
                    raise Forbidden("too many key backup versions: delete an old one first")
                version = (last or 0) + 1
                s.add(
                    RoomKeyBackup(
                        user_id=req.user_id,
                        version=version,
                        algorithm=ALGORITHM,
                        auth_data=auth_data,
                        etag=0,
                        key_count=0,
                        deleted=False,
                    )
                )
                await s.flush()  # a concurrent creation of the same number fails here
                await self._audit(s, req, ip, "matrix.key_backup.create", version)
            return {"version": str(version)}

        return await retry_on_conflict(create, "another backup version was created at once")

    async def version_info(self, req: Requester, version: str | None) -> JsonDict:
        async with self.db.session() as s:
            if version is None:
                row = await self._current(s, req.user_id)
                if row is None:
                    raise NotFound("No current backup version")
            else:
                row = await self._version(s, req.user_id, version)
            return _info(row)

    async def do_update_version(
        self, req: Requester, version: str, body: JsonDict, *, ip: str | None
    ) -> None:
        """Only ``auth_data`` changes; the algorithm must stay and a ``version`` in the body
        must be the one of the path."""
        if "version" in body and body["version"] != version:
            raise BadRequest(
                "the version in the body is not the one of the path", errcode="M_INVALID_PARAM"
            )
        auth_data = check_auth_data(body.get("algorithm"), body.get("auth_data"))
        async with self.db.transaction() as s:
            row = await self._version(s, req.user_id, version, lock=True)
            if body["algorithm"] != row.algorithm:
                raise BadRequest(
                    "the algorithm of a backup cannot change", errcode="M_INVALID_PARAM"
                )
            row.auth_data = auth_data
            await self._audit(s, req, ip, "matrix.key_backup.update", row.version)

    async def do_delete_version(self, req: Requester, version: str, *, ip: str | None) -> None:
        """The version and all its keys; deleting a deleted version succeeds (spec)."""
        number = parse_version(version)
        async with self.db.transaction() as s:
            row = (
                None
                if number is None
                else await s.get(RoomKeyBackup, (req.user_id, number), with_for_update=True)
            )
            if row is None:
                raise _not_found()
            if row.deleted:
                return
            await s.execute(
                delete(RoomKeyBackupKey).where(
                    RoomKeyBackupKey.user_id == req.user_id, RoomKeyBackupKey.version == number
                )
            )
            # the row stays so that its number is never reused; its data goes
            row.deleted, row.auth_data, row.key_count, row.etag = True, "{}", 0, row.etag + 1
            await self._audit(s, req, ip, "matrix.key_backup.delete", row.version)

    async def _audit(
        self, s: AsyncSession, req: Requester, ip: str | None, action: str, version: int
    ) -> None:
        await self.audit.record(
            s,
            Actor(req.account_id, ip),
            action,
            resource=f"account/{req.account_id}",
            details={"device": req.device_id, "version": str(version)},
        )

    # ------------------------------------------------------------ keys

    async def do_put_keys(
        self,
        req: Requester,
        version: str,
        body: JsonDict,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        """Store the uploaded keys in the current version, each replacing the stored key of
        its session only when it is better (``BackupKey.better_than``). Another version that
        exists is 403 ``M_WRONG_ROOM_KEYS_VERSION`` with the current one; an unknown one 404."""
        upload = check_upload(body, room_id, session_id)
        async with self.db.transaction() as s:
            row = await self._current(s, req.user_id, lock=True)
            if row is None:
                raise NotFound("No current backup version")
            if str(row.version) != version:
                await self._version(s, req.user_id, version)  # 404 when unknown or deleted
                raise Forbidden(
                    "Wrong backup version.",
                    errcode="M_WRONG_ROOM_KEYS_VERSION",
                    extra={"current_version": str(row.version)},
                )
            changed = 0
            new_rows: list[RoomKeyBackupKey] = []
            for rid, sessions in upload.items():
                stored = await self._stored(s, req.user_id, row.version, rid, list(sessions))
                for sid, key in sessions.items():
                    old = stored.get(sid)
                    if old is None:
                        new_rows.append(self._new_row(req.user_id, row.version, rid, sid, key))
                    elif key.better_than(BackupKey.of(old)):
                        old.first_message_index = key.first_message_index
                        old.forwarded_count = key.forwarded_count
                        old.is_verified = key.is_verified
                        old.session_data = key.session_data
                        changed += 1
            added = len(new_rows)
            if added:
                await self._check_room(s, req.user_id, added)
                s.add_all(new_rows)
            if added or changed:
                row.key_count += added
                row.etag += 1
            return _update_answer(row)

    @staticmethod
    def _new_row(
        user_id: str, version: int, room_id: str, session_id: str, key: BackupKey
    ) -> RoomKeyBackupKey:
        return RoomKeyBackupKey(
            user_id=user_id,
            version=version,
            room_id=room_id,
            session_id=session_id,
            first_message_index=key.first_message_index,
            forwarded_count=key.forwarded_count,
            is_verified=key.is_verified,
            session_data=key.session_data,
        )

    @staticmethod
    async def _stored(
        s: AsyncSession, user_id: str, version: int, room_id: str, session_ids: list[str]
    ) -> dict[str, RoomKeyBackupKey]:
        out: dict[str, RoomKeyBackupKey] = {}
        for i in range(0, len(session_ids), _CHUNK):
            rows = (
                await s.execute(
                    select(RoomKeyBackupKey).where(
                        RoomKeyBackupKey.user_id == user_id,
                        RoomKeyBackupKey.version == version,
                        RoomKeyBackupKey.room_id == room_id,
                        RoomKeyBackupKey.session_id.in_(session_ids[i : i + _CHUNK]),
                    )
                )
            ).scalars()
            out.update((r.session_id, r) for r in rows)
        return out

    async def _check_room(self, s: AsyncSession, user_id: str, adding: int) -> None:
        """Refuse keys beyond the user's quota (all live versions together)."""
        total = (
            await s.execute(
                select(func.coalesce(func.sum(RoomKeyBackup.key_count), 0)).where(
                    RoomKeyBackup.user_id == user_id, RoomKeyBackup.deleted.is_(False)
                )
            )
        ).scalar_one()
        if int(total) + adding > self.max_keys_per_user:
            raise TooLarge(
                f"the key backups are full ({self.max_keys_per_user} keys): "
                "delete an old backup version"
            )

    async def get_keys(
        self,
        req: Requester,
        version: str,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        """All rooms' keys, one room's (``{"sessions": {}}`` when it has none, as the spec
        says) or one session's (404 when missing)."""
        async with self.db.session() as s:
            row = await self._version(s, req.user_id, version)
            q = select(RoomKeyBackupKey).where(
                *_selected(req.user_id, row.version, room_id, session_id)
            )
            keys = (await s.execute(q)).scalars().all()
        if session_id is not None:
            if not keys:
                raise NotFound("Key not found.")
            return BackupKey.of(keys[0]).to_json()
        rooms: dict[str, JsonDict] = {}
        for k in keys:
            rooms.setdefault(k.room_id, {"sessions": {}})["sessions"][k.session_id] = BackupKey.of(
                k
            ).to_json()
        if room_id is not None:
            return rooms.get(room_id, {"sessions": {}})
        return {"rooms": rooms}

    async def do_delete_keys(
        self,
        req: Requester,
        version: str,
        room_id: str | None = None,
        session_id: str | None = None,
    ) -> JsonDict:
        async with self.db.transaction() as s:
            row = await self._version(s, req.user_id, version, lock=True)
            q = delete(RoomKeyBackupKey).where(
                *_selected(req.user_id, row.version, room_id, session_id)
            )
            gone = (await s.execute(q)).rowcount  # type: ignore[attr-defined]
            if gone:
                row.key_count -= gone
                row.etag += 1
            return _update_answer(row)


def _selected(
    user_id: str, version: int, room_id: str | None, session_id: str | None
) -> list[ColumnElement[bool]]:
    """The keys of one backup version: all of them, one room's or one session's."""
    where = [RoomKeyBackupKey.user_id == user_id, RoomKeyBackupKey.version == version]
    if room_id is not None:
        where.append(RoomKeyBackupKey.room_id == room_id)
    if session_id is not None:
        where.append(RoomKeyBackupKey.session_id == session_id)
    return where
