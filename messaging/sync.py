"""``/sync``: everything new for one device since a stream position, long-polling when idle."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import bindparam, or_, select

from konsil.clock import Clock, ms
from konsil.db import Database
from messaging.common import (
    JsonDict,
    LazySession,
    Requester,
    current_position,
    loads,
    make_token,
)
from messaging.devices import DeviceService, room_peers
from messaging.ephemeral import Ephemeral
from messaging.models import DeviceListChange, Event, Membership
from messaging.notifier import Notifier
from messaging.pushrules import PUSH_RULES, STORED_TYPE, push_rules_event
from messaging.rooms import RoomService, event_json
from messaging.timeline import RecentEvents

INCREMENTAL_CAP = 2000

# built once (building a statement costs more than running it from the compiled cache)
_INCREMENTAL = (
    select(Event)
    .where(
        Event.room_id.in_(bindparam("rooms", expanding=True)),
        Event.stream > bindparam("since"),
        Event.stream <= bindparam("upto"),
    )
    .order_by(Event.stream.desc())
    .limit(INCREMENTAL_CAP)
)
_MEMBERSHIPS = select(
    Membership.room_id, Membership.membership, Membership.stream, Membership.visible_from
).where(Membership.user_id == bindparam("me"), Membership.forgotten.is_(False))


@dataclass(frozen=True)
class SyncParams:
    since: int | None
    timeout_ms: int
    timeline_limit: int
    full_state: bool


async def current_stream(db: Database) -> int:
    async with db.session() as s:
        return await current_position(s)


class Mship(NamedTuple):
    room_id: str
    membership: str
    stream: int
    visible_from: int


class SyncService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        notifier: Notifier,
        rooms: RoomService,
        devices: DeviceService,
        ephemeral: Ephemeral,
        recent: RecentEvents,
    ) -> None:
        self.recent = recent
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.rooms = rooms
        self.devices = devices
        self.ephemeral = ephemeral
        self._mships: dict[str, tuple[int, int, list[Mship]]] = {}
        self._base: int | None = None  # a committed position read from the database

    async def position(self) -> int:
        async with self.db.session() as s:
            return await current_position(s)

    async def sync(self, req: Requester, p: SyncParams) -> JsonDict:
        deadline = self.clock.monotonic() + p.timeout_ms / 1000
        if p.since is not None and not p.full_state and p.timeout_ms > 0:
            # Nothing has concerned this user since the client's token: wait before computing.
            if self.notifier.latest(req.user_id) <= p.since:
                await self.notifier.wait(req.user_id, p.since, deadline - self.clock.monotonic())
        while True:
            resp, has_data = await self._compute(req, p)
            if has_data or p.since is None or p.full_state:
                return resp
            remaining = deadline - self.clock.monotonic()
            upto = int(resp["next_batch"][1:])
            woken = await self.notifier.wait(req.user_id, max(upto, p.since), remaining)
            if not woken:
                return resp

    async def _memberships(
        self, ls: LazySession, me: str, upto: int, forget_gen: int
    ) -> list[Mship]:
        """The user's (unforgotten) memberships as of ``upto``. Cached per user: valid while no
        membership change of theirs is marked after the position it was read at (marks are set
        before commits) and they forgot no room since."""
        hit = self._mships.get(me)
        if (
            hit is not None
            and hit[0] <= upto
            and hit[1] == forget_gen
            and self.notifier.changed(me, "membership") <= hit[0]
        ):
            return hit[2]
        rows = await (await ls.get()).execute(_MEMBERSHIPS, {"me": me})
        mships = [Mship(*r) for r in rows.all()]
        if len(self._mships) > 100_000:
            self._mships.clear()
        self._mships[me] = (upto, forget_gen, mships)
        return mships

    async def _compute(self, req: Requester, p: SyncParams) -> tuple[JsonDict, bool]:
        me = req.user_id
        since = p.since
        limit = max(1, min(p.timeline_limit, 500))
        # generations read before the snapshot: a change committed after this is not cached
        forget_gen = self.rooms.forget_gen.get(me, 0)
        otk_gen = self.devices.otk_generation(me, req.device_id)
        # the session opens at its first query: a woken sync answered from memory opens none
        async with LazySession(self.db) as ls:
            if since is not None and not p.full_state and self._base is not None:
                # Everything up to the notifier's head has committed; so has everything up to
                # the position this process read from the database once (before it notified).
                upto = max(self._base, self.notifier.head())
            else:
                upto = await current_position(await ls.get())
                if self._base is None:
                    self._base = upto
            mships = await self._memberships(ls, me, upto, forget_gen)
            joined = {m.room_id: m for m in mships if m.membership == "join"}
            fresh = {
                r for r, m in joined.items() if since is None or p.full_state or m.stream > since
            }
            old = [r for r in joined if r not in fresh]
            join: dict[str, JsonDict] = {}

            def marked(kind: str) -> bool:
                return since is None or p.full_state or self.notifier.changed(me, kind) > since

            # rooms the client knew already: what happened since, from memory when the room's
            # recent events are there, else in one query
            if old and since is not None and marked("room"):
                ask_db: list[str] = []
                now_ms = ms(self.clock.now())
                for room_id in old:
                    recent = self.recent.since(room_id, since, upto, now_ms)
                    if recent is None:
                        ask_db.append(room_id)
                    elif recent:
                        timeline_c = recent[-limit:]
                        join[room_id] = {
                            "timeline": {
                                "events": [c.json(req) for c in timeline_c],
                                "limited": len(recent) > limit,
                                "prev_batch": make_token(timeline_c[0].ev.stream - 1),
                            },
                            "state": {"events": []},  # the cache holds no state events
                        }
                rows = (
                    list(
                        (
                            await (await ls.get()).execute(
                                _INCREMENTAL, {"rooms": ask_db, "since": since, "upto": upto}
                            )
                        ).scalars()
                    )
                    if ask_db
                    else []
                )
                per_room: dict[str, list[Event]] = defaultdict(list)
                for e in reversed(rows):
                    per_room[e.room_id].append(e)
                for room_id, evs in per_room.items():
                    limited = len(evs) > limit or len(rows) >= INCREMENTAL_CAP
                    timeline = evs[-limit:]
                    gap_state: dict[tuple[str, str], Event] = {}
                    for e in evs[:-limit] if len(evs) > limit else []:
                        if e.state_key is not None:
                            gap_state[(e.type, e.state_key)] = e
                    join[room_id] = {
                        "timeline": {
                            "events": [event_json(e, req) for e in timeline],
                            "limited": limited,
                            "prev_batch": make_token(timeline[0].stream - 1),
                        },
                        "state": {"events": [event_json(e) for e in gap_state.values()]},
                    }

            # rooms new to the client: full state and the latest events it may see
            for room_id in fresh:
                s = await ls.get()
                m = joined[room_id]
                evs = list(
                    (
                        await s.execute(
                            select(Event)
                            .where(
                                Event.room_id == room_id,
                                Event.stream <= upto,
                                Event.stream >= m.visible_from,
                            )
                            .order_by(Event.stream.desc())
                            .limit(limit + 1)
                        )
                    ).scalars()
                )
                limited = len(evs) > limit
                timeline = list(reversed(evs[:limit]))
                in_timeline = {e.event_id for e in timeline}
                state = await self.rooms.state_events(s, room_id)
                join[room_id] = {
                    "timeline": {
                        "events": [event_json(e, req) for e in timeline],
                        "limited": limited,
                        "prev_batch": make_token((timeline[0].stream if timeline else upto) - 1),
                    },
                    "state": {
                        "events": [
                            event_json(e)
                            for e in sorted(state.values(), key=lambda e: e.stream)
                            if e.event_id not in in_timeline
                        ]
                    },
                }

            invite: dict[str, JsonDict] = {}
            leave: dict[str, JsonDict] = {}
            for m in mships:
                if m.membership == "invite" and (since is None or m.stream > since):
                    invite[m.room_id] = {
                        "invite_state": {
                            "events": await self.rooms.invite_state(await ls.get(), m.room_id, me)
                        }
                    }
                elif (
                    m.membership in ("leave", "ban")
                    and since is not None
                    and since < m.stream <= upto
                ):
                    s = await ls.get()
                    evs = list(
                        (
                            await s.execute(
                                select(Event)
                                .where(
                                    Event.room_id == m.room_id,
                                    Event.stream > since,
                                    Event.stream <= m.stream,
                                    Event.stream >= m.visible_from,
                                )
                                .order_by(Event.stream.desc())
                                .limit(limit)
                            )
                        ).scalars()
                    )
                    if not evs or evs[0].stream != m.stream:
                        own = await s.get(Event, m.stream)
                        if own is not None:
                            evs.insert(0, own)
                    leave[m.room_id] = {
                        "timeline": {
                            "events": [event_json(e, req) for e in reversed(evs)],
                            "limited": False,
                        },
                        "state": {"events": []},
                    }

            # account data
            global_data: list[JsonDict] = []
            new_data = (
                await self.devices.account_data_since(await ls.get(), me, since or 0, upto)
                if marked("account_data")
                else []
            )
            push_rules: JsonDict | None = None
            for ad in new_data:
                if ad.type in (PUSH_RULES, STORED_TYPE):
                    # m.push_rules is built from the user's stored changes (a stored m.push_rules
                    # is a leftover from before the server managed it)
                    if ad.type == STORED_TYPE and ad.room_id == "":
                        push_rules = push_rules_event(me, loads(ad.content))
                    continue
                item = {"type": ad.type, "content": loads(ad.content)}
                if ad.room_id == "":
                    global_data.append(item)
                elif ad.room_id in join:
                    join[ad.room_id].setdefault("account_data", {"events": []})["events"].append(
                        item
                    )
                elif ad.room_id in joined:
                    join[ad.room_id] = {
                        "timeline": {"events": [], "limited": False},
                        "account_data": {"events": [item]},
                    }

            if push_rules is None and since is None:
                # a first sync always has them: the server-default rules until the user changes one
                push_rules = push_rules_event(me, None)
            if push_rules is not None:
                global_data.append(push_rules)

            # typing and receipts
            for room_id, events in self.ephemeral.for_rooms(list(joined), since).items():
                entry = join.setdefault(room_id, {"timeline": {"events": [], "limited": False}})
                entry["ephemeral"] = {"events": events}

            changed: set[str] = set()
            left: set[str] = set()
            if since is not None:
                changed, left = await self._device_lists(
                    ls, me, since, upto, join, fresh, leave, marked("device_list")
                )
            otk, fallback = await self.devices.cached_key_counts(ls.get, me, req.device_id, otk_gen)

        to_device = await self.devices.to_device_for_sync(
            req, since, upto, check=since is None or self.notifier.changed(me, "to_device") > since
        )
        has_data = bool(join or invite or leave or to_device or changed or left or global_data)
        next_pos = upto
        if since is not None and not has_data:
            next_pos = max(upto, since)
        resp: JsonDict = {
            "next_batch": make_token(next_pos),
            "rooms": {"join": join, "invite": invite, "leave": leave},
            "to_device": {"events": to_device},
            "device_lists": {"changed": sorted(changed), "left": sorted(left)},
            "device_one_time_keys_count": otk,
            "device_unused_fallback_key_types": fallback,
            "org.matrix.msc2732.device_unused_fallback_key_types": fallback,
            "account_data": {"events": global_data},
            "presence": {"events": []},
        }
        return resp, has_data

    async def _device_lists(
        self,
        ls: LazySession,
        me: str,
        since: int,
        upto: int,
        join: dict[str, JsonDict],
        fresh: set[str],
        leave: dict[str, JsonDict],
        devices_marked: bool,
    ) -> tuple[set[str], set[str]]:
        """Users whose devices changed (or who newly share a room with me), and users who no
        longer share any room with me. Cheap when nothing changed: one query."""
        changed_devices: set[str] = set()
        signed_by_me: set[str] = set()  # whose master key I signed (nobody else is told)
        if devices_marked:
            rows = await (await ls.get()).execute(
                select(DeviceListChange.user_id, DeviceListChange.audience)
                .where(
                    DeviceListChange.stream > since,
                    DeviceListChange.stream <= upto,
                    or_(DeviceListChange.audience.is_(None), DeviceListChange.audience == me),
                )
                .distinct()
            )
            for user_id, audience in rows.all():
                (changed_devices if audience is None else signed_by_me).add(user_id)
        joined_now: set[str] = set()
        departed: set[str] = set()
        for room_id, entry in join.items():
            if room_id in fresh:
                continue
            for ev in entry["timeline"]["events"] + entry.get("state", {}).get("events", []):
                if ev["type"] != "m.room.member" or ev.get("state_key") == me:
                    continue
                if ev["content"].get("membership") == "join":
                    joined_now.add(ev["state_key"])
                elif ev["content"].get("membership") in ("leave", "ban"):
                    departed.add(ev["state_key"])
        if fresh:
            rows = await (await ls.get()).execute(
                select(Membership.user_id).where(
                    Membership.room_id.in_(fresh), Membership.membership == "join"
                )
            )
            joined_now.update(rows.scalars())
        if leave:
            rows = await (await ls.get()).execute(
                select(Membership.user_id).where(Membership.room_id.in_(list(leave)))
            )
            departed.update(rows.scalars())
        joined_now.discard(me)
        departed.discard(me)
        if not changed_devices and not departed:
            return joined_now | signed_by_me, set()
        peers = await room_peers(await ls.get(), me)
        changed = (changed_devices & peers) | joined_now | signed_by_me
        left = {u for u in departed if u not in peers}
        return changed, left
