"""The homeserver's services wired together, and the small operations that span several of them
(typing, receipts, read markers, directory search, retention)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select

from konsil.audit.service import AuditLog
from konsil.auth.service import AuthService
from konsil.clock import Clock, ms
from konsil.config import Config
from konsil.db import Database
from konsil.errors import BadRequest, Forbidden
from konsil.identity.models import SERVICE, Account
from messaging.common import JsonDict, Requester
from messaging.cross_signing import CrossSigningService
from messaging.devices import DeviceService
from messaging.ephemeral import Ephemeral
from messaging.key_backup import KeyBackupService
from messaging.media import MediaService
from messaging.models import Event
from messaging.notifier import InProcessNotifier, Notifier
from messaging.policy import InvitePolicy
from messaging.pushrules import PushRuleService
from messaging.retention import purge_expired
from messaging.rooms import RoomService
from messaging.sync import SyncService
from messaging.timeline import RecentEvents


@dataclass
class Homeserver:
    db: Database
    clock: Clock
    server_name: str
    notifier: Notifier
    devices: DeviceService
    cross_signing: CrossSigningService
    rooms: RoomService
    sync: SyncService
    ephemeral: Ephemeral
    media: MediaService
    push_rules: PushRuleService
    key_backup: KeyBackupService

    @classmethod
    def build(
        cls,
        config: Config,
        db: Database,
        clock: Clock,
        auth: AuthService,
        audit: AuditLog,
        notifier: Notifier | None = None,
    ) -> Homeserver:
        notifier = notifier or InProcessNotifier()
        name = config.server_name
        devices = DeviceService(db, clock, auth, audit, notifier, name)
        cross_signing = CrossSigningService(db, audit, notifier, devices)
        media = MediaService(db, clock, Path(config.data_dir), name, config.matrix.max_upload_bytes)
        # the recent-events cache is complete above the position the notifier starts from
        recent = RecentEvents(start=notifier.head())
        rooms = RoomService(db, clock, notifier, name, InvitePolicy(), media, recent)
        ephemeral = Ephemeral(clock)
        sync = SyncService(db, clock, notifier, rooms, devices, ephemeral, recent)
        push_rules = PushRuleService(devices)
        key_backup = KeyBackupService(db, audit)
        return cls(
            db,
            clock,
            name,
            notifier,
            devices,
            cross_signing,
            rooms,
            sync,
            ephemeral,
            media,
            push_rules,
            key_backup,
        )

    # ------------------------------------------------------------------ ephemeral

    async def do_typing(self, req: Requester, room_id: str, typing: bool, timeout_ms: int) -> None:
        def record(pos: int) -> None:
            self.ephemeral.set_typing(room_id, req.user_id, typing, timeout_ms, pos)

        await self.rooms.stamp(req, room_id, True, record)

    async def do_receipt(self, req: Requester, room_id: str, rtype: str, event_id: str) -> None:
        if rtype not in ("m.read", "m.read.private", "m.fully_read"):
            raise BadRequest("unknown receipt type", errcode="M_INVALID_PARAM")
        if rtype == "m.fully_read":
            await self.devices.do_set_account_data(
                req, room_id, "m.fully_read", {"event_id": event_id}
            )
            return
        async with self.db.session() as s:
            found = (
                await s.execute(
                    select(Event.stream).where(Event.event_id == event_id, Event.room_id == room_id)
                )
            ).first()
        if found is None:
            raise BadRequest("no such event in this room", errcode="M_NOT_FOUND")
        ts = ms(self.clock.now())

        def record(pos: int) -> None:
            self.ephemeral.set_receipt(room_id, req.user_id, event_id, rtype, ts, pos)

        await self.rooms.stamp(req, room_id, rtype == "m.read", record)

    async def do_read_markers(self, req: Requester, room_id: str, body: JsonDict) -> None:
        for key, rtype in (
            ("m.fully_read", "m.fully_read"),
            ("m.read", "m.read"),
            ("m.read.private", "m.read.private"),
        ):
            v = body.get(key)
            if v is None:
                continue
            if not isinstance(v, str):
                raise BadRequest(f"{key} must be an event id", errcode="M_BAD_JSON")
            await self.do_receipt(req, room_id, rtype, v)

    # ------------------------------------------------------------------ directory

    async def search_directory(self, req: Requester, term: str, limit: int) -> JsonDict:
        """Konsil's practitioner directory only (no guests, no inactive accounts)."""
        if req.is_guest:
            raise Forbidden("guest accounts cannot search the directory")
        limit = max(1, min(limit, 50))
        like = f"%{term.strip().lower()}%"
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(Account.username, Account.display_name)
                    .where(
                        Account.is_active.is_(True),
                        Account.is_guest.is_(False),
                        Account.role != SERVICE,
                        or_(
                            Account.username.ilike(like),
                            Account.display_name.ilike(like),
                        ),
                    )
                    .order_by(Account.display_name)
                    .limit(limit + 1)
                )
            ).all()
        results = [
            {"user_id": f"@{u}:{self.server_name}", "display_name": d} for u, d in rows[:limit]
        ]
        return {"results": results, "limited": len(rows) > limit}

    # ------------------------------------------------------------------ retention

    async def do_purge_expired(self) -> tuple[int, int]:
        return await purge_expired(self.db, self.clock, self.media, self.rooms.recent)
