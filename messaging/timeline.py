"""The newest events of each room, kept in memory so that a woken ``/sync`` needs no database.

Messages sent through the group-commit batcher are published here right after their transaction
commits (and before anybody is notified). Every other write to a room's timeline (state,
membership, redaction, retention purge) *invalidates* the room instead, inside its transaction,
before it commits: the room's ``floor`` rises to that position and its list empties. So, for a
room with no batch in flight, the list holds every event with ``floor < stream`` that has
committed; a sync whose ``since`` is below the floor (or whose ``upto`` reaches the first position
of a batch in flight in the room: committed, perhaps, but not published yet) reads the database
as before. Only valid while this process is the only writer (in-process notifier).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from messaging.common import JsonDict, Requester, loads
from messaging.models import Event


@dataclass
class Cached:
    """An event and its client JSON without the per-device ``unsigned`` part."""

    ev: Event
    base: JsonDict

    @classmethod
    def of(cls, ev: Event) -> Cached:
        return cls(ev, base_json(ev))

    def json(self, req: Requester) -> JsonDict:
        ev = self.ev
        d = dict(self.base)
        if ev.txn_id and ev.sender == req.user_id and ev.txn_device == req.device_id:
            d["unsigned"] = {"transaction_id": ev.txn_id}
        else:
            d["unsigned"] = {}
        return d


def base_json(ev: Event) -> JsonDict:
    """An event as clients see it, without ``unsigned`` (``rooms.event_json`` adds it)."""
    d: JsonDict = {
        "event_id": ev.event_id,
        "room_id": ev.room_id,
        "sender": ev.sender,
        "type": ev.type,
        "content": loads(ev.content),
        "origin_server_ts": ev.origin_server_ts,
    }
    if ev.state_key is not None:
        d["state_key"] = ev.state_key
    if ev.type == "m.room.redaction":
        d["redacts"] = d["content"].get("redacts")
    return d


@dataclass
class _Tail:
    floor: int
    events: deque[Cached] = field(default_factory=deque)


class RecentEvents:
    PER_ROOM = 256
    MAX_AGE_MS = 3_600_000
    MAX_ROOMS = 20_000

    def __init__(self, start: int = 0) -> None:
        # rooms not in ``_rooms`` are complete above ``_floor`` (nothing was evicted yet: the
        # process start position)
        self._floor = start
        self._rooms: dict[str, _Tail] = {}
        # room -> first positions of its batches in flight (allocated, not published yet)
        self._pending: dict[str, list[int]] = {}
        self._high = start  # the newest position seen, for the floor after an eviction

    # ------------------------------------------------------------------ writers

    def invalidate(self, room_id: str, pos: int) -> None:
        """Inside a writing transaction, before it commits: the room's timeline changes at
        ``pos`` in a way this cache does not follow."""
        self._high = max(self._high, pos)
        tail = self._rooms.get(room_id)
        if tail is None:
            self._room(room_id, pos)
        elif pos > tail.floor:
            tail.floor = pos
            tail.events.clear()

    def begin(self, room_ids: Iterable[str], first: int) -> None:
        """Inside a batch's transaction, which holds positions from ``first`` on: its events
        will be published (or the batch aborted)."""
        for r in room_ids:
            self._pending.setdefault(r, []).append(first)

    def publish(self, room_ids: Iterable[str], first: int, events: list[Event]) -> None:
        """After the batch committed: its events, in stream order."""
        for ev in events:
            self._high = max(self._high, ev.stream)
            tail = self._rooms.get(ev.room_id) or self._room(ev.room_id, self._floor)
            if ev.stream <= tail.floor or (tail.events and ev.stream <= tail.events[-1].ev.stream):
                continue
            tail.events.append(Cached.of(ev))
            if len(tail.events) > self.PER_ROOM:
                tail.floor = tail.events.popleft().ev.stream
        self._done(room_ids, first)

    def abort(self, room_ids: Iterable[str], first: int, last: int) -> None:
        """The batch failed: forget what it might have written."""
        rooms = list(room_ids)
        for r in rooms:
            self.invalidate(r, last)
        self._done(rooms, first)

    def _done(self, room_ids: Iterable[str], first: int) -> None:
        for r in room_ids:
            firsts = self._pending.get(r)
            if firsts is not None:
                firsts.remove(first)
                if not firsts:
                    del self._pending[r]

    def _room(self, room_id: str, floor: int) -> _Tail:
        if len(self._rooms) >= self.MAX_ROOMS:
            self._rooms.clear()
            self._floor = self._high
            floor = max(floor, self._floor)
        tail = self._rooms[room_id] = _Tail(floor)
        return tail

    # ------------------------------------------------------------------ readers

    def since(self, room_id: str, since: int, upto: int, now_ms: int) -> list[Cached] | None:
        """The room's events with ``since < stream <= upto``, oldest first; None when this cache
        cannot tell (the database must be asked)."""
        firsts = self._pending.get(room_id)
        if firsts is not None and upto >= min(firsts):
            return None
        tail = self._rooms.get(room_id)
        if tail is not None:
            # events older than an hour leave: retention (days) may purge them from another
            # process, which this cache would not hear of
            old = now_ms - self.MAX_AGE_MS
            while tail.events and tail.events[0].ev.origin_server_ts < old:
                tail.floor = tail.events.popleft().ev.stream
        floor = tail.floor if tail is not None else self._floor
        if since < floor:
            return None
        if tail is None:
            return []
        out: list[Cached] = []
        for c in reversed(tail.events):
            s = c.ev.stream
            if s <= since:
                break
            if s <= upto:
                out.append(c)
        out.reverse()
        return out
