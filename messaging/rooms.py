"""Rooms: creation, membership, events, state, history, with the authorisation rules a homeserver
enforces (membership, join rules, power levels, history visibility)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.clock import Clock, ms
from konsil.db import Database
from konsil.errors import BadRequest, Forbidden, NotFound, ValidationError
from konsil.identity.models import Account
from messaging.common import (
    JsonDict,
    LazySession,
    Requester,
    allocate,
    current_position,
    dumps,
    loads,
    localpart_of,
    make_token,
    new_event_id,
    random_id,
)
from messaging.media import MediaService
from messaging.models import CurrentState, Event, MediaRoom, Membership, Profile, Room
from messaging.notifier import Notifier
from messaging.policy import InvitePolicy
from messaging.timeline import RecentEvents, base_json

AUTH_TYPES = (
    "m.room.create",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.history_visibility",
)
STRIPPED_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.canonical_alias",
)
KEEP_ON_REDACT = {
    "m.room.member": ("membership",),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule",),
    "m.room.power_levels": (
        "ban",
        "events",
        "events_default",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    ),
    "m.room.history_visibility": ("history_visibility",),
}
MAX_CONTENT_BYTES = 65_536
# built once: building a statement costs more than running it from the compiled cache
_EVENT_COLUMNS = tuple(c.key for c in Event.__table__.columns)
_INSERT_EVENTS = insert(cast(Table, Event.__table__))
_SEEN_TXNS = select(
    Event.sender, Event.txn_device, Event.txn_id, Event.room_id, Event.event_id
).where(tuple_(Event.sender, Event.txn_device, Event.txn_id).in_(bindparam("keys", expanding=True)))
_SEEN_TXN = select(Event.event_id).where(
    Event.sender == bindparam("sender"),
    Event.txn_device == bindparam("device"),
    Event.txn_id == bindparam("txn"),
    Event.room_id == bindparam("room"),
)


def event_json(ev: Event, req: Requester | None = None) -> JsonDict:
    d = base_json(ev)
    unsigned: JsonDict = {}
    if (
        req is not None
        and ev.txn_id
        and ev.sender == req.user_id
        and ev.txn_device == req.device_id
    ):
        unsigned["transaction_id"] = ev.txn_id
    if ev.redacted_because:
        unsigned["redacted_because"] = loads(ev.redacted_because)
    d["unsigned"] = unsigned
    return d


def stripped(ev: Event) -> JsonDict:
    return {
        "type": ev.type,
        "state_key": ev.state_key or "",
        "content": loads(ev.content),
        "sender": ev.sender,
    }


@dataclass
class AuthState:
    creator: str
    power_levels: JsonDict | None
    join_rule: str
    history_visibility: str

    def power(self, user_id: str) -> int:
        if self.power_levels is None:
            return 100 if user_id == self.creator else 0
        users = self.power_levels.get("users") or {}
        level: Any = users.get(user_id, self.power_levels.get("users_default", 0))
        try:
            return int(level)
        except (TypeError, ValueError):
            return 0

    def needed(self, action: str, default: int) -> int:
        if self.power_levels is None:
            return default
        try:
            return int(self.power_levels.get(action, default))
        except (TypeError, ValueError):
            return default

    def needed_for_event(self, event_type: str, is_state: bool) -> int:
        pl = self.power_levels or {}
        events = pl.get("events") or {}
        if event_type in events:
            try:
                return int(events[event_type])
            except (TypeError, ValueError):
                return 100
        if is_state:
            return self.needed("state_default", 50)
        return self.needed("events_default", 0)


def _text(content: JsonDict, key: str) -> str | None:
    v = content.get(key)
    return v if isinstance(v, str) else None


@dataclass
class _Pending:
    room_id: str
    sender: str
    event_type: str
    raw: str  # the content's JSON
    txn: tuple[str, str]
    links: list[str]
    notify: list[str]
    checked_at: int  # the sender was a member as of this position
    # a stamp only (typing, receipt): a stream position, no event; called with it after the
    # commit, before anybody is notified
    on_commit: Callable[[int], None] | None = None
    fut: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SendBatcher:
    """Group commit for messages (and the stream positions of typing and receipts): whatever was
    submitted while a transaction ran goes into the next one. One stream allocation and one
    commit per batch, instead of per message."""

    MAX_BATCH = 500

    def __init__(self, rooms: RoomService) -> None:
        self.rooms = rooms
        self._queue: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: _Pending) -> str:
        self._queue.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await asyncio.shield(item.fut)

    async def _drain(self) -> None:
        rooms = self.rooms
        while self._queue:
            batch = self._queue[: self.MAX_BATCH]
            del self._queue[: self.MAX_BATCH]
            done: list[tuple[_Pending, int, Event | None]] = []
            users: set[str] = set()
            room_ids = {it.room_id for it in batch if it.on_commit is None}
            begun = False
            first = last = 0
            try:
                async with rooms.db.transaction() as s:
                    first = await allocate(s, len(batch))
                    last = first + len(batch) - 1
                    # retries of transactions already stored get the stored event
                    keys = [(it.sender, it.txn[0], it.txn[1]) for it in batch if not it.on_commit]
                    stored = (
                        {
                            (sender, device, txn, room): event_id
                            for sender, device, txn, room, event_id in await s.execute(
                                _SEEN_TXNS, {"keys": keys}
                            )
                        }
                        if keys
                        else {}
                    )
                    # Holding the position, every earlier write has committed: a sender whose
                    # room changed state since their check (a kick, a ban) is checked again.
                    # Their position stays unused (stream positions may have gaps).
                    keep: list[_Pending] = []
                    for it in batch:
                        key = (it.sender, it.txn[0], it.txn[1], it.room_id)
                        if it.on_commit is None and key in stored:
                            it.fut.set_result(stored[key])
                            continue
                        if rooms._state_pos.get(it.room_id, 0) > it.checked_at:
                            m = (
                                await s.execute(
                                    select(Membership.membership).where(
                                        Membership.room_id == it.room_id,
                                        Membership.user_id == it.sender,
                                    )
                                )
                            ).scalar_one_or_none()
                            if m != "join":
                                it.fut.set_exception(Forbidden("you are not a member of this room"))
                                continue
                        keep.append(it)
                    batch = keep
                    # from here until published, syncs read these rooms from the database
                    rooms.recent.begin(room_ids, first)
                    begun = True
                    links: set[tuple[str, str]] = set()
                    rows: list[dict[str, Any]] = []
                    for i, it in enumerate(batch):
                        users.update(it.notify)
                        if it.on_commit is not None:
                            done.append((it, first + i, None))
                            continue
                        # messages only (no state): one Core INSERT for the batch, without the
                        # ORM's unit of work; the (transient) Event objects go to the cache
                        ev = rooms._event(
                            first + i, it.room_id, it.sender, it.event_type, None, it.raw, it.txn
                        )
                        rows.append({c: getattr(ev, c) for c in _EVENT_COLUMNS})
                        done.append((it, first + i, ev))
                        links.update((m, it.room_id) for m in it.links)
                    if rows:
                        await s.execute(_INSERT_EVENTS, rows)
                    for media_id, room_id in links:
                        s.add(MediaRoom(media_id=media_id, room_id=room_id))
                    rooms.notifier.mark(users, last, "room")
            except Exception as exc:
                if begun:
                    rooms.recent.abort(room_ids, first, last)
                for it in batch:
                    if not it.fut.done():
                        it.fut.set_exception(exc)
                continue
            rooms.recent.publish(room_ids, first, [e for _, _, e in done if e is not None])
            for it, pos, _ in done:
                if it.on_commit is not None:
                    it.on_commit(pos)
            rooms.notifier.notify(users, last)
            for it, _, stored_ev in done:
                if not it.fut.done():
                    it.fut.set_result(stored_ev.event_id if stored_ev is not None else "")

    async def stamp(
        self,
        room_id: str,
        user_id: str,
        checked_at: int,
        notify: list[str],
        on_commit: Callable[[int], None],
    ) -> None:
        """A stream position for something kept in memory (typing, a receipt), taken with the
        next batch; ``on_commit`` records it before ``notify`` is woken."""
        await self.submit(
            _Pending(room_id, user_id, "", "", ("", ""), [], notify, checked_at, on_commit)
        )


class RoomService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        server_name: str,
        invite_policy: InvitePolicy,
        media: MediaService | None = None,
        recent: RecentEvents | None = None,
    ) -> None:
        self.media = media
        self.recent = recent or RecentEvents()
        self._batcher = SendBatcher(self)
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.server_name = server_name
        self.invite_policy = invite_policy
        # Per room, the newest stream position at which its state changed (set inside the
        # writing transaction, before it commits), and what do_send needs of the room, as of a
        # position: valid while no state change is marked after that position.
        self._state_pos: dict[str, int] = {}
        self._send_cache: dict[str, tuple[int, AuthState, frozenset[str], list[str]]] = {}
        # sends in progress, per (sender, device, txnId, room): a retry waits for the first
        self._sending: dict[tuple[str, str, str, str], asyncio.Future[str]] = {}
        # Per user, bumped after a forget commits (forgetting changes no stream position).
        self.forget_gen: dict[str, int] = {}

    # ------------------------------------------------------------------ reading state

    async def state_events(
        self, s: AsyncSession, room_id: str, types: Iterable[str] | None = None
    ) -> dict[tuple[str, str], Event]:
        q = (
            select(Event)
            .join(CurrentState, CurrentState.stream == Event.stream)
            .where(CurrentState.room_id == room_id)
        )
        if types is not None:
            q = q.where(CurrentState.type.in_(list(types)))
        rows = (await s.execute(q)).scalars()
        return {(e.type, e.state_key or ""): e for e in rows}

    async def auth_state(self, s: AsyncSession, room_id: str) -> AuthState:
        st = await self.state_events(s, room_id, AUTH_TYPES)
        create = st.get(("m.room.create", ""))
        if create is None:
            raise NotFound("no such room")
        pl = st.get(("m.room.power_levels", ""))
        jr = st.get(("m.room.join_rules", ""))
        hv = st.get(("m.room.history_visibility", ""))
        return AuthState(
            creator=create.sender,
            power_levels=loads(pl.content) if pl else None,
            join_rule=(_text(loads(jr.content), "join_rule") if jr else None) or "invite",
            history_visibility=(_text(loads(hv.content), "history_visibility") if hv else None)
            or "shared",
        )

    async def membership(self, s: AsyncSession, room_id: str, user_id: str) -> Membership | None:
        return await s.get(Membership, (room_id, user_id))

    async def members_to_notify(self, s: AsyncSession, room_id: str) -> list[str]:
        rows = await s.execute(
            select(Membership.user_id).where(
                Membership.room_id == room_id, Membership.membership.in_(("join", "invite"))
            )
        )
        return list(rows.scalars())

    async def _members(self, s: AsyncSession, room_id: str) -> tuple[frozenset[str], list[str]]:
        """The joined members, and those to notify of a new event (joined or invited)."""
        rows = await s.execute(
            select(Membership.user_id, Membership.membership).where(
                Membership.room_id == room_id, Membership.membership.in_(("join", "invite"))
            )
        )
        pairs = rows.all()
        return frozenset(u for u, m in pairs if m == "join"), [u for u, _ in pairs]

    def state_changed(self, room_id: str, pos: int) -> None:
        """Called inside the writing transaction: the room's state changes at ``pos``."""
        if self._state_pos.get(room_id, 0) < pos:
            self._state_pos[room_id] = pos
        self._send_cache.pop(room_id, None)

    async def _require_joined(self, s: AsyncSession, room_id: str, user_id: str) -> Membership:
        m = await self.membership(s, room_id, user_id)
        if m is None or m.membership != "join":
            if await s.get(Room, room_id) is None:
                raise NotFound("no such room")
            raise Forbidden("you are not a member of this room")
        return m

    # ------------------------------------------------------------------ writing events

    def _event(
        self,
        pos: int,
        room_id: str,
        sender: str,
        event_type: str,
        state_key: str | None,
        raw: str,
        txn: tuple[str, str] | None,
    ) -> Event:
        return Event(
            stream=pos,
            event_id=new_event_id(),
            room_id=room_id,
            sender=sender,
            type=event_type,
            state_key=state_key,
            content=raw,
            origin_server_ts=ms(self.clock.now()),
            redacted_because=None,
            txn_device=txn[0] if txn else None,
            txn_id=txn[1] if txn else None,
        )

    async def _append(
        self,
        s: AsyncSession,
        pos: int,
        room_id: str,
        sender: str,
        event_type: str,
        content: JsonDict | None,
        state_key: str | None = None,
        *,
        history_visibility: str = "shared",
        txn: tuple[str, str] | None = None,
    ) -> Event:
        ev = self._event(
            pos,
            room_id,
            sender,
            event_type,
            state_key,
            dumps(content),
            txn,
        )
        s.add(ev)
        # only the send batcher (which does not come here) publishes to the recent-events cache
        self.recent.invalidate(room_id, pos)
        if state_key is not None:
            self.state_changed(room_id, pos)
            cs = await s.get(CurrentState, (room_id, event_type, state_key))
            if cs is None:
                s.add(
                    CurrentState(room_id=room_id, type=event_type, state_key=state_key, stream=pos)
                )
            else:
                cs.stream = pos
            if event_type == "m.room.member":
                membership = (content or {}).get("membership")
                await self._update_membership(
                    s, room_id, state_key, str(membership), pos, history_visibility
                )
        return ev

    async def _update_membership(
        self, s: AsyncSession, room_id: str, user_id: str, new: str, pos: int, hv: str
    ) -> None:
        self.notifier.mark([user_id], pos, "membership")
        m = await s.get(Membership, (room_id, user_id))
        old = m.membership if m is not None else None
        if new == "join" and old != "join":
            if hv in ("shared", "world_readable"):
                visible_from = 0
            elif hv == "invited" and old == "invite" and m is not None:
                visible_from = m.visible_from
            else:
                visible_from = pos
        elif new == "invite":
            visible_from = pos
        elif m is not None and old == "join":
            visible_from = m.visible_from  # they keep what they could see until now
        else:
            visible_from = pos + 1  # never joined: nothing of the timeline is theirs
        if m is None:
            s.add(
                Membership(
                    room_id=room_id,
                    user_id=user_id,
                    membership=new,
                    stream=pos,
                    visible_from=visible_from,
                    forgotten=False,
                )
            )
        else:
            if new == "join" and old == "join":
                visible_from = m.visible_from
            m.membership, m.stream, m.visible_from, m.forgotten = new, pos, visible_from, False

    async def _displayname(self, s: AsyncSession, user_id: str) -> str | None:
        p = await s.get(Profile, user_id)
        if p is not None and p.displayname:
            return p.displayname
        local = localpart_of(user_id, self.server_name)
        account = (
            await s.execute(select(Account.display_name).where(Account.username == local))
        ).scalar_one_or_none()
        return account

    async def _account_for(self, s: AsyncSession, user_id: str) -> Account:
        local = localpart_of(user_id, self.server_name)
        account = (
            (await s.execute(select(Account).where(Account.username == local))).scalar_one_or_none()
            if local
            else None
        )
        if account is None or not account.is_active:
            raise NotFound(f"unknown user {user_id}")
        return account

    # ------------------------------------------------------------------ createRoom

    async def do_create_room(self, req: Requester, body: JsonDict) -> str:
        if req.is_guest:
            raise Forbidden("guest accounts cannot create rooms", errcode="M_FORBIDDEN")
        preset = body.get("preset")
        visibility = body.get("visibility", "private")
        if preset is None:
            preset = "public_chat" if visibility == "public" else "private_chat"
        if preset not in ("private_chat", "trusted_private_chat", "public_chat"):
            raise BadRequest("unknown preset", errcode="M_INVALID_PARAM")
        invites = body.get("invite") or []
        initial_state = body.get("initial_state") or []
        name, topic = body.get("name"), body.get("topic")
        override = body.get("power_level_content_override") or {}
        creation = body.get("creation_content") or {}
        is_direct = body.get("is_direct", False)
        if (
            not isinstance(invites, list)
            or not all(isinstance(u, str) for u in invites)
            or not isinstance(initial_state, list)
            or not all(
                isinstance(e, dict)
                and isinstance(e.get("type"), str)
                and isinstance(e.get("content"), dict)
                and isinstance(e.get("state_key", ""), str)
                for e in initial_state
            )
            or (name is not None and not isinstance(name, str))
            or (topic is not None and not isinstance(topic, str))
            or not isinstance(override, dict)
            or not isinstance(creation, dict)
            or not isinstance(is_direct, bool)
        ):
            raise BadRequest("malformed createRoom request", errcode="M_BAD_JSON")
        room_id = f"!{random_id(18)}:{self.server_name}"
        me = req.user_id
        pl: JsonDict = {
            "users": {me: 100},
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "notifications": {"room": 50},
        }
        if preset == "trusted_private_chat":
            for u in invites:
                pl["users"][u] = 100
        pl.update(override)
        events: list[tuple[str, str | None, JsonDict]] = [
            ("m.room.create", "", {**creation, "creator": me, "room_version": "10"}),
            ("m.room.member", me, {"membership": "join"}),
            ("m.room.power_levels", "", pl),
            (
                "m.room.join_rules",
                "",
                {"join_rule": "public" if preset == "public_chat" else "invite"},
            ),
            ("m.room.history_visibility", "", {"history_visibility": "shared"}),
        ]
        if preset != "public_chat":
            events.append(("m.room.guest_access", "", {"guest_access": "can_join"}))
        for e in initial_state:
            events.append((e["type"], e.get("state_key", ""), e["content"]))
        if name:
            events.append(("m.room.name", "", {"name": name}))
        if topic:
            events.append(("m.room.topic", "", {"topic": topic}))
        for u in invites:
            content: JsonDict = {"membership": "invite"}
            if is_direct:
                content["is_direct"] = True
            events.append(("m.room.member", u, content))
        async with self.db.transaction() as s:
            for u in invites:
                target = await self._account_for(s, u)
                await self.invite_policy.check(s, req, u, target)
            first = await allocate(s, len(events))
            s.add(Room(room_id=room_id, creator=me, created_at=self.clock.now()))
            hv = "shared"
            for i, (etype, key, content) in enumerate(events):
                if etype == "m.room.member" and content.get("membership") == "join":
                    content = {**content, "displayname": await self._displayname(s, me)}
                if etype == "m.room.history_visibility":
                    hv = _text(content, "history_visibility") or hv
                await self._append(
                    s, first + i, room_id, me, etype, content, key, history_visibility=hv
                )
            last = first + len(events) - 1
            self.notifier.mark([me, *invites], last, "room")
        self.notifier.notify([me, *invites], last)
        return room_id

    # ------------------------------------------------------------------ membership

    async def do_membership(
        self,
        req: Requester,
        room_id: str,
        target: str,
        new: str,
        *,
        reason: str | None = None,
    ) -> None:
        me = req.user_id
        async with self.db.transaction() as s:
            auth = await self.auth_state(s, room_id)
            mine = await self.membership(s, room_id, me)
            theirs = mine if target == me else await self.membership(s, room_id, target)
            my_ms = mine.membership if mine else "leave"
            their_ms = theirs.membership if theirs else "leave"
            content: JsonDict = {"membership": new}
            if new == "join":
                if target != me:
                    raise Forbidden("you can only join for yourself")
                if their_ms == "ban":
                    raise Forbidden("you are banned from this room")
                if their_ms == "join":
                    return
                if auth.join_rule != "public" and their_ms != "invite":
                    raise Forbidden("this room is invite-only")
                content["displayname"] = await self._displayname(s, me)
            elif new == "invite":
                if my_ms != "join":
                    raise Forbidden("you are not a member of this room")
                if their_ms == "ban":
                    raise Forbidden("that user is banned from this room")
                if their_ms in ("join", "invite"):
                    if their_ms == "join":
                        raise Forbidden("that user is already in the room")
                    return
                if auth.power(me) < auth.needed("invite", 0):
                    raise Forbidden("your power level does not allow inviting")
                account = await self._account_for(s, target)
                await self.invite_policy.check(s, req, target, account)
                content["displayname"] = account.display_name
            elif new == "leave" and target == me:
                if my_ms not in ("join", "invite"):
                    raise Forbidden("you are not in this room")
            elif new == "leave":  # kick, or unban
                if my_ms != "join":
                    raise Forbidden("you are not a member of this room")
                if their_ms == "ban":
                    if auth.power(me) < auth.needed("ban", 50):
                        raise Forbidden("your power level does not allow unbanning")
                elif their_ms in ("join", "invite"):
                    if auth.power(me) < auth.needed("kick", 50) or auth.power(me) <= auth.power(
                        target
                    ):
                        raise Forbidden("your power level does not allow kicking this user")
                else:
                    raise Forbidden("that user is not in the room")
            elif new == "ban":
                if my_ms != "join":
                    raise Forbidden("you are not a member of this room")
                if auth.power(me) < auth.needed("ban", 50) or auth.power(me) <= auth.power(target):
                    raise Forbidden("your power level does not allow banning this user")
                await self._account_for(s, target)
            else:
                raise BadRequest("unknown membership", errcode="M_INVALID_PARAM")
            if reason:
                content["reason"] = reason
            pos = await allocate(s)
            await self._append(
                s,
                pos,
                room_id,
                me,
                "m.room.member",
                content,
                target,
                history_visibility=auth.history_visibility,
            )
            notify = await self.members_to_notify(s, room_id)
            self.notifier.mark({*notify, target}, pos, "room")
        self.notifier.notify({*notify, target}, pos)

    async def do_forget(self, req: Requester, room_id: str) -> None:
        async with self.db.transaction() as s:
            m = await self.membership(s, room_id, req.user_id)
            if m is None:
                return
            if m.membership in ("join", "invite"):
                raise BadRequest("leave the room before forgetting it", errcode="M_UNKNOWN")
            m.forgotten = True
        self.forget_gen[req.user_id] = self.forget_gen.get(req.user_id, 0) + 1

    async def joined_rooms(self, req: Requester) -> list[str]:
        async with self.db.session() as s:
            rows = await s.execute(
                select(Membership.room_id).where(
                    Membership.user_id == req.user_id, Membership.membership == "join"
                )
            )
            return list(rows.scalars())

    # ------------------------------------------------------------------ events

    @staticmethod
    def _check_content(content: JsonDict) -> None:
        if len(dumps(content).encode()) > MAX_CONTENT_BYTES:
            raise BadRequest("event content is too large", errcode="M_TOO_LARGE")

    async def do_send(
        self, req: Requester, room_id: str, event_type: str, txn_id: str, content: JsonDict
    ) -> str:
        """Idempotent per device and txnId, also while the first request is still running."""
        key = (req.user_id, req.device_id, txn_id, room_id)
        running = self._sending.get(key)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._sending[key] = fut
        try:
            event_id = await self._send(req, room_id, event_type, txn_id, content)
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        else:
            fut.set_result(event_id)
            return event_id
        finally:
            del self._sending[key]
            if not fut.done():
                fut.cancel()

    async def _send(
        self, req: Requester, room_id: str, event_type: str, txn_id: str, content: JsonDict
    ) -> str:
        raw = dumps(content)
        if len(raw) > MAX_CONTENT_BYTES or len(raw.encode()) > MAX_CONTENT_BYTES:
            raise BadRequest("event content is too large", errcode="M_TOO_LARGE")
        if event_type in ("m.room.redaction", "m.room.member", "m.room.create"):
            raise Forbidden("use the dedicated endpoint for this event type")
        # Checks first, from memory when the room's state has not changed since they were last
        # read; the batch's write transaction then checks the transaction id (a retry gets the
        # first event back) and inserts, so the position lock is held briefly.
        async with LazySession(self.db) as ls:
            try:
                as_of, auth, notify = await self.as_member(ls, req, room_id)
                if auth.power(req.user_id) < auth.needed_for_event(event_type, False):
                    raise Forbidden("your power level does not allow sending this event")
            except Forbidden:
                # a retry of what was sent before the sender lost the right still succeeds
                seen = await self._seen(await ls.get(), req, room_id, txn_id)
                if seen is None:
                    raise
                return seen
            links = (
                await self.media.media_to_link(
                    await ls.get(), req, room_id, raw, event_type == "m.room.encrypted"
                )
                if self.media is not None and ("mxc://" in raw or event_type == "m.room.encrypted")
                else []
            )
        return await self._batcher.submit(
            _Pending(
                room_id,
                req.user_id,
                event_type,
                raw,
                (req.device_id, txn_id),
                links,
                notify,
                as_of,
            )
        )

    async def as_member(
        self, ls: LazySession, req: Requester, room_id: str
    ) -> tuple[int, AuthState, list[str]]:
        """For a joined caller: the position as of which this was read, the room's auth state,
        and who to notify of something new in it. From memory while the room's state has not
        changed since it was last read; Forbidden (NotFound) for non-members."""
        cached = self._send_cache.get(room_id)
        if (
            cached is not None
            and self._state_pos.get(room_id, 0) <= cached[0]
            and req.user_id in cached[2]
        ):
            return cached[0], cached[1], cached[3]
        s = await ls.get()
        # the position first: in the snapshot (SQLite) or before the reads (PostgreSQL)
        as_of = await current_position(s)
        await self._require_joined(s, room_id, req.user_id)
        auth = await self.auth_state(s, room_id)
        joined, notify = await self._members(s, room_id)
        self._send_cache[room_id] = (as_of, auth, joined, notify)
        return as_of, auth, notify

    async def stamp(
        self, req: Requester, room_id: str, notify_all: bool, on_commit: Callable[[int], None]
    ) -> None:
        """A stream position for something of the caller's kept in memory (typing, receipts),
        taken with the next send batch; members (or only the caller) are notified after
        ``on_commit`` recorded it."""
        async with LazySession(self.db) as ls:
            as_of, _, notify = await self.as_member(ls, req, room_id)
        await self._batcher.stamp(
            room_id, req.user_id, as_of, notify if notify_all else [req.user_id], on_commit
        )

    @staticmethod
    async def _seen(s: AsyncSession, req: Requester, room_id: str, txn_id: str) -> str | None:
        row = await s.execute(
            _SEEN_TXN,
            {"sender": req.user_id, "device": req.device_id, "txn": txn_id, "room": room_id},
        )
        return row.scalar_one_or_none()

    async def do_set_state(
        self, req: Requester, room_id: str, event_type: str, state_key: str, content: JsonDict
    ) -> str:
        self._check_content(content)
        if event_type == "m.room.create":
            raise Forbidden("the create event cannot be replaced")
        async with self.db.transaction() as s:
            await self._require_joined(s, room_id, req.user_id)
            auth = await self.auth_state(s, room_id)
            if event_type == "m.room.member":
                if state_key != req.user_id or content.get("membership") != "join":
                    raise Forbidden("use the membership endpoints to change membership")
            elif auth.power(req.user_id) < auth.needed_for_event(event_type, True):
                raise Forbidden("your power level does not allow changing this state")
            if (
                state_key.startswith("@")
                and state_key != req.user_id
                and auth.power(req.user_id) < 100
            ):
                raise Forbidden("state keyed by another user's id is theirs to set")
            if event_type == "m.room.power_levels":
                self._check_power_change(auth, req.user_id, content)
            pos = await allocate(s)
            ev = await self._append(
                s,
                pos,
                room_id,
                req.user_id,
                event_type,
                content,
                state_key,
                history_visibility=auth.history_visibility,
            )
            notify = await self.members_to_notify(s, room_id)
            self.notifier.mark(notify, pos, "room")
        self.notifier.notify(notify, pos)
        return ev.event_id

    @staticmethod
    def _check_power_change(auth: AuthState, me: str, content: JsonDict) -> None:
        mine = auth.power(me)
        users = content.get("users") or {}
        if not isinstance(users, dict):
            raise BadRequest("users must be an object", errcode="M_BAD_JSON")
        old_users = (auth.power_levels or {}).get("users") or {}
        for user, level in users.items():
            if not isinstance(level, int):
                raise BadRequest("power levels are integers", errcode="M_BAD_JSON")
            old = old_users.get(user, 0)
            if level != old and (level > mine or (old >= mine and user != me)):
                raise Forbidden("you cannot grant or remove power at or above your own level")

    async def do_redact(
        self, req: Requester, room_id: str, event_id: str, txn_id: str, reason: str | None
    ) -> str:
        async with self.db.transaction() as s:
            await self._require_joined(s, room_id, req.user_id)
            target = (
                await s.execute(
                    select(Event).where(Event.event_id == event_id, Event.room_id == room_id)
                )
            ).scalar_one_or_none()
            if target is None:
                raise NotFound("no such event")
            auth = await self.auth_state(s, room_id)
            if target.sender != req.user_id and auth.power(req.user_id) < auth.needed("redact", 50):
                raise Forbidden("your power level does not allow redacting others' events")
            content: JsonDict = {"redacts": event_id}
            if reason:
                content["reason"] = reason
            pos = await allocate(s)
            ev = await self._append(
                s,
                pos,
                room_id,
                req.user_id,
                "m.room.redaction",
                content,
                txn=(req.device_id, txn_id),
            )
            if target.state_key is not None:
                self.state_changed(room_id, pos)
            keep = KEEP_ON_REDACT.get(target.type, ())
            old = loads(target.content)
            target.content = dumps({k: old[k] for k in keep if k in old})
            target.redacted_because = dumps(
                {
                    "event_id": ev.event_id,
                    "sender": req.user_id,
                    "type": "m.room.redaction",
                    "content": content,
                    "origin_server_ts": ev.origin_server_ts,
                }
            )
            notify = await self.members_to_notify(s, room_id)
            self.notifier.mark(notify, pos, "room")
        self.notifier.notify(notify, pos)
        return ev.event_id

    # ------------------------------------------------------------------ reading

    async def _visible_range(self, s: AsyncSession, room_id: str, user_id: str) -> tuple[int, int]:
        m = await self.membership(s, room_id, user_id)
        if m is None or m.membership == "invite":
            if await s.get(Room, room_id) is None:
                raise NotFound("no such room")
            raise Forbidden("you are not a member of this room")
        upper = 2**62 if m.membership == "join" else m.stream
        if m.visible_from > upper:
            raise Forbidden("you are not a member of this room")
        return m.visible_from, upper

    async def room_state(self, req: Requester, room_id: str) -> list[JsonDict]:
        async with self.db.session() as s:
            await self._require_joined(s, room_id, req.user_id)
            st = await self.state_events(s, room_id)
            return [event_json(e) for e in sorted(st.values(), key=lambda e: e.stream)]

    async def state_content(
        self, req: Requester, room_id: str, event_type: str, state_key: str
    ) -> JsonDict:
        async with self.db.session() as s:
            await self._require_joined(s, room_id, req.user_id)
            cs = await s.get(CurrentState, (room_id, event_type, state_key))
            ev = await s.get(Event, cs.stream) if cs is not None else None
            if ev is None:
                raise NotFound("no such state")
            content: JsonDict = loads(ev.content)
            return content

    async def messages(
        self,
        req: Requester,
        room_id: str,
        *,
        from_pos: int | None,
        to_pos: int | None,
        backwards: bool,
        limit: int,
        current: int,
    ) -> JsonDict:
        limit = max(1, min(limit, 1000))
        async with self.db.session() as s:
            lo, hi = await self._visible_range(s, room_id, req.user_id)
            q = select(Event).where(
                Event.room_id == room_id, Event.stream >= lo, Event.stream <= hi
            )
            if backwards:
                start = current if from_pos is None else from_pos
                q = q.where(Event.stream <= start)
                if to_pos is not None:
                    q = q.where(Event.stream > to_pos)
                q = q.order_by(Event.stream.desc())
            else:
                start = 0 if from_pos is None else from_pos
                q = q.where(Event.stream > start)
                if to_pos is not None:
                    q = q.where(Event.stream <= to_pos)
                q = q.order_by(Event.stream)
            rows = list((await s.execute(q.limit(limit))).scalars())
        out: JsonDict = {"chunk": [event_json(e, req) for e in rows], "start": make_token(start)}
        if len(rows) == limit:
            out["end"] = make_token(rows[-1].stream - 1 if backwards else rows[-1].stream)
        return out

    async def context(self, req: Requester, room_id: str, event_id: str, limit: int) -> JsonDict:
        limit = max(0, min(limit, 100))
        async with self.db.session() as s:
            lo, hi = await self._visible_range(s, room_id, req.user_id)
            ev = (
                await s.execute(
                    select(Event).where(Event.event_id == event_id, Event.room_id == room_id)
                )
            ).scalar_one_or_none()
            if ev is None or not (lo <= ev.stream <= hi):
                raise NotFound("no such event")
            base = select(Event).where(
                Event.room_id == room_id, Event.stream >= lo, Event.stream <= hi
            )
            before = list(
                (
                    await s.execute(
                        base.where(Event.stream < ev.stream)
                        .order_by(Event.stream.desc())
                        .limit(limit // 2 + limit % 2)
                    )
                ).scalars()
            )
            after = list(
                (
                    await s.execute(
                        base.where(Event.stream > ev.stream)
                        .order_by(Event.stream)
                        .limit(limit // 2)
                    )
                ).scalars()
            )
            st = await self.state_events(s, room_id)
        return {
            "event": event_json(ev, req),
            "events_before": [event_json(e, req) for e in before],
            "events_after": [event_json(e, req) for e in after],
            "start": make_token((before[-1].stream if before else ev.stream) - 1),
            "end": make_token(after[-1].stream if after else ev.stream),
            "state": [event_json(e) for e in st.values()],
        }

    async def joined_members(self, req: Requester, room_id: str) -> JsonDict:
        async with self.db.session() as s:
            await self._require_joined(s, room_id, req.user_id)
            rows = (
                await s.execute(
                    select(Event)
                    .join(
                        Membership,
                        and_(
                            Membership.room_id == Event.room_id,
                            Membership.stream == Event.stream,
                        ),
                    )
                    .where(Membership.room_id == room_id, Membership.membership == "join")
                )
            ).scalars()
            joined: JsonDict = {}
            for e in rows:
                c = loads(e.content)
                joined[e.state_key or ""] = {
                    "display_name": c.get("displayname"),
                    "avatar_url": c.get("avatar_url"),
                }
            return {"joined": joined}

    async def members(self, req: Requester, room_id: str) -> JsonDict:
        async with self.db.session() as s:
            await self._require_joined(s, room_id, req.user_id)
            st = await self.state_events(s, room_id, ["m.room.member"])
            return {"chunk": [event_json(e) for e in st.values()]}

    async def invite_state(self, s: AsyncSession, room_id: str, user_id: str) -> list[JsonDict]:
        st = await self.state_events(s, room_id, STRIPPED_TYPES)
        out = [stripped(e) for e in st.values()]
        member = await s.get(CurrentState, (room_id, "m.room.member", user_id))
        if member is not None:
            ev = await s.get(Event, member.stream)
            if ev is not None:
                out.append(stripped(ev))
                inviter = await s.get(CurrentState, (room_id, "m.room.member", ev.sender))
                inv = await s.get(Event, inviter.stream) if inviter else None
                if inv is not None and inv.sender != user_id:
                    out.append(stripped(inv))
        return out

    def content_type_check(self, content: Any) -> JsonDict:
        if not isinstance(content, dict):
            raise ValidationError("content must be a JSON object", fields={"content": "object"})
        return content
