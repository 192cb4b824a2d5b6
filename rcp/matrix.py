"""The boards' Matrix rooms, run by the Konsil service account (``@konsil:<server_name>``).

One room per board, created on first need by the service account: named after the board,
invite-only, end-to-end encryption enabled for the members' own discussion (the service account
has no device keys, so its notices are plain ``m.notice`` events that carry only a link). Board
members and the physicians who referred a case to the board are invited; joining is theirs to do
(a Matrix client accepts the invitation). ``sync`` is called after a membership change or a
submission (best effort) and before each notice (so a notice always reaches an invited
recipient).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from html import escape

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Conflict, Forbidden
from konsil.identity.models import SERVICE, SERVICE_USERNAME, Account
from messaging.common import JsonDict, Requester
from messaging.models import Event, Membership
from messaging.rooms import RoomService
from rcp.domain.lifecycle import CaseState
from rcp.models import Board, BoardMember, BoardRoom, Case

log = logging.getLogger(__name__)

SERVICE_LOCALPART = SERVICE_USERNAME
SERVICE_DEVICE = "KONSILRCP"
SERVICE_DISPLAY_NAME = "Konsil"


class MatrixBoardRooms:
    """``rcp.notices.BoardRooms`` on Konsil's own homeserver. ``rooms`` returns the messaging
    feature's ``RoomService`` (None while it is not running: then nothing is posted and the
    notices wait)."""

    def __init__(self, db: Database, clock: Clock, rooms: Callable[[], RoomService | None]) -> None:
        self.db = db
        self.clock = clock
        self._rooms = rooms
        self._locks: dict[str, asyncio.Lock] = {}
        self._service: Requester | None = None

    def rooms(self) -> RoomService:
        rs = self._rooms()
        if rs is None:
            raise Conflict("the messaging feature is not running: RCP notices wait")
        return rs

    def user_id(self, username: str) -> str:
        return f"@{username}:{self.rooms().server_name}"

    async def service_account(self) -> Requester:
        """The service account, created once: no password (it cannot sign in), not a guest."""
        if self._service is not None:
            return self._service
        for _ in range(2):
            async with self.db.session() as s:
                acc = (
                    await s.execute(select(Account).where(Account.username == SERVICE_LOCALPART))
                ).scalar_one_or_none()
            if acc is not None:
                if acc.role != SERVICE or acc.password_hash is not None:
                    # a person holds the name (created before it was reserved): never act as them
                    raise Conflict(
                        f"the account {SERVICE_LOCALPART!r} is not Konsil's service account; "
                        "rename it before RCP can post to the boards' rooms"
                    )
                break
            try:
                async with self.db.transaction() as s:
                    s.add(
                        Account(
                            username=SERVICE_LOCALPART,
                            password_hash=None,
                            role=SERVICE,
                            display_name=SERVICE_DISPLAY_NAME,
                            is_active=True,
                            is_guest=False,
                            failed_logins=0,
                            created_at=self.clock.now(),
                        )
                    )
            except IntegrityError:
                continue  # created meanwhile by another worker: read it again
        if acc is None:
            raise Conflict("the Konsil service account could not be created")
        self._service = Requester(self.user_id(SERVICE_LOCALPART), SERVICE_DEVICE, acc.id, False)
        return self._service

    async def room_of(self, board_id: str) -> str:
        """The board's room, created by the service account on first need."""
        lock = self._locks.setdefault(board_id, asyncio.Lock())
        async with lock:
            async with self.db.session() as s:
                row = await s.get(BoardRoom, board_id)
                board = await s.get(Board, board_id)
            if row is not None:
                return row.room_id
            if board is None:
                raise Conflict("no such board")
            me = await self.service_account()
            room_id = await self.rooms().do_create_room(
                me,
                {
                    "name": board.name,
                    "topic": "RCP · Konsil",
                    "preset": "private_chat",
                    "initial_state": [
                        {
                            "type": "m.room.encryption",
                            "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                        },
                        # the service account moderates; members may not open the room to guests
                        {
                            "type": "m.room.guest_access",
                            "state_key": "",
                            "content": {"guest_access": "forbidden"},
                        },
                    ],
                },
            )
            try:
                async with self.db.transaction() as s:
                    s.add(
                        BoardRoom(board_id=board_id, room_id=room_id, created_at=self.clock.now())
                    )
            except IntegrityError:
                # another worker created one first: use theirs (ours stays empty)
                async with self.db.session() as s:
                    other = await s.get(BoardRoom, board_id)
                assert other is not None
                return other.room_id
            return room_id

    async def _wanted(self, board_id: str) -> set[str]:
        """Usernames that belong in the room: members, and referrers of submitted cases."""
        async with self.db.session() as s:
            members = await s.execute(
                select(Account.username)
                .join(BoardMember, BoardMember.account_id == Account.id)
                .where(
                    BoardMember.board_id == board_id,
                    Account.is_active.is_(True),
                    Account.is_guest.is_(False),
                )
            )
            referrers = await s.execute(
                select(Account.username)
                .join(Case, Case.referrer_account_id == Account.id)
                .where(
                    Case.board_id == board_id,
                    Case.state != CaseState.DRAFT.value,
                    Account.is_active.is_(True),
                )
            )
            return set(members.scalars()) | set(referrers.scalars())

    async def _memberships(self, room_id: str) -> dict[str, tuple[str, str]]:
        """User id -> (membership, sender of the membership event)."""
        async with self.db.session() as s:
            rows = await s.execute(
                select(Membership.user_id, Membership.membership, Event.sender)
                .join(Event, Event.stream == Membership.stream)
                .where(Membership.room_id == room_id)
            )
            return {str(u): (str(m), str(by)) for u, m, by in rows.all()}

    async def _invite(self, room_id: str, user_id: str) -> None:
        try:
            await self.rooms().do_membership(
                await self.service_account(), room_id, user_id, "invite"
            )
        except Forbidden:
            # the user's invite permissions refuse the service account, or they were banned
            log.info("RCP room invitation refused by the user's invite policy")

    async def sync(self, board_id: str) -> None:
        room_id = await self.room_of(board_id)
        current = await self._memberships(room_id)
        me = (await self.service_account()).user_id
        for username in sorted(await self._wanted(board_id)):
            uid = self.user_id(username)
            ms, by = current.get(uid, ("", ""))
            # who left is not invited again; who the service account took out (removed from
            # the board) and is wanted again (added back, or now a referrer) is
            if not ms or (ms == "leave" and by == me and uid != me):
                await self._invite(room_id, uid)

    async def remove(self, board_id: str, username: str) -> None:
        """After a member left the board: out of the room, unless still wanted (a referrer)."""
        if username in await self._wanted(board_id):
            return
        room_id = await self.room_of(board_id)
        uid = self.user_id(username)
        if (await self._memberships(room_id)).get(uid, ("", ""))[0] in ("join", "invite"):
            await self.rooms().do_membership(
                await self.service_account(),
                room_id,
                uid,
                "leave",
                reason="removed from the board / retiré de la RCP",
            )

    async def post_notice(
        self, board_id: str, recipient_account_id: str, link: str, txn_id: str
    ) -> str:
        async with self.db.session() as s:
            recipient = await s.get(Account, recipient_account_id)
        if recipient is None or not recipient.is_active:
            raise Conflict("the recipient's account is not active")
        await self.sync(board_id)
        room_id = await self.room_of(board_id)
        uid = self.user_id(recipient.username)
        if (await self._memberships(room_id)).get(uid, ("", ""))[0] not in ("join", "invite"):
            await self._invite(room_id, uid)
            if (await self._memberships(room_id)).get(uid, ("", ""))[0] not in ("join", "invite"):
                raise Conflict("the recipient does not accept invitations to the board's room")
        name = recipient.display_name
        content: JsonDict = {
            "msgtype": "m.notice",
            "body": f"{name} — compte rendu RCP publié / RCP report published: {link}",
            "format": "org.matrix.custom.html",
            "formatted_body": (
                f'<a href="https://matrix.to/#/{uid}">{escape(name)}</a> — '
                f"compte rendu RCP publié / RCP report published: "
                f'<a href="{escape(link)}">{escape(link)}</a>'
            ),
            "m.mentions": {"user_ids": [uid]},
        }
        return await self.rooms().do_send(
            await self.service_account(), room_id, "m.room.message", txn_id, content
        )
