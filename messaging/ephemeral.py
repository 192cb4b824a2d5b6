"""Typing notifications and read receipts: kept in memory, stamped with global stream positions so
that ``/sync`` returns only what changed since the client's token."""

from __future__ import annotations

from collections import defaultdict

from konsil.clock import Clock
from messaging.common import JsonDict


class Ephemeral:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.position = 0
        self._typing: dict[str, dict[str, float]] = defaultdict(dict)  # room -> user -> expiry
        self._typing_pos: dict[str, int] = {}
        # room -> (event_id, receipt type, user) -> (ts, pos)
        self._receipts: dict[str, dict[tuple[str, str, str], tuple[int, int]]] = defaultdict(dict)

    def set_typing(
        self, room_id: str, user_id: str, typing: bool, timeout_ms: int, pos: int
    ) -> None:
        users = self._typing[room_id]
        if typing:
            users[user_id] = self.clock.monotonic() + max(0, min(timeout_ms, 120_000)) / 1000
        else:
            users.pop(user_id, None)
        self._typing_pos[room_id] = pos
        self.position = max(self.position, pos)

    def set_receipt(
        self, room_id: str, user_id: str, event_id: str, rtype: str, ts: int, pos: int
    ) -> None:
        room = self._receipts[room_id]
        for key in [k for k in room if k[1] == rtype and k[2] == user_id]:
            del room[key]  # one receipt of each type per user and room
        room[(event_id, rtype, user_id)] = (ts, pos)
        self.position = max(self.position, pos)

    def for_rooms(self, rooms: list[str], since: int | None) -> dict[str, list[JsonDict]]:
        out: dict[str, list[JsonDict]] = {}
        now = self.clock.monotonic()
        for room_id in rooms:
            events: list[JsonDict] = []
            tp = self._typing_pos.get(room_id)
            if tp is not None and (since is None or tp > since):
                users = self._typing.get(room_id, {})
                live = sorted(u for u, exp in users.items() if exp > now)
                events.append({"type": "m.typing", "content": {"user_ids": live}})
            content: dict[str, dict[str, dict[str, JsonDict]]] = {}
            for (event_id, rtype, user), (ts, pos) in self._receipts.get(room_id, {}).items():
                if since is None or pos > since:
                    content.setdefault(event_id, {}).setdefault(rtype, {})[user] = {"ts": ts}
            if content:
                events.append({"type": "m.receipt", "content": content})
            if events:
                out[room_id] = events
        return out
