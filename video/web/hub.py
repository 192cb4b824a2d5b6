"""In-process signalling hub: the two parties' WebSockets per appointment, and each
practitioner's live waiting-room feeds."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from aiohttp import web


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, web.WebSocketResponse]] = {}
        self.lobbies: dict[str, set[web.WebSocketResponse]] = {}
        # Held while a party joins and is greeted and announced, and while admitting: the
        # second party to arrive announces both once, with the status of that moment.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, appointment_id: str) -> asyncio.Lock:
        lock = self._locks.get(appointment_id)
        if lock is None:  # kept while in use (``async with`` holds it), then dropped
            lock = self._locks[appointment_id] = asyncio.Lock()
        return lock

    def join(self, appointment_id: str, role: str, ws: web.WebSocketResponse) -> None:
        self.rooms.setdefault(appointment_id, {})[role] = ws

    def leave(self, appointment_id: str, role: str, ws: web.WebSocketResponse) -> bool:
        room = self.rooms.get(appointment_id, {})
        if room.get(role) is ws:
            del room[role]
            if not room:
                self.rooms.pop(appointment_id, None)
            return True
        return False

    def present(self, appointment_id: str, role: str) -> bool:
        return role in self.rooms.get(appointment_id, {})

    async def send(self, appointment_id: str, role: str, msg: dict[str, Any]) -> None:
        ws = self.rooms.get(appointment_id, {}).get(role)
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json(msg)

    async def broadcast(self, appointment_id: str, msg: dict[str, Any]) -> None:
        for role in ("doctor", "patient"):
            await self.send(appointment_id, role, msg)

    async def push_lobby(self, account_id: str, msg: dict[str, Any]) -> None:
        for ws in list(self.lobbies.get(account_id, ())):
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_json(msg)

    async def close_all(self) -> None:
        for room in list(self.rooms.values()):
            for ws in list(room.values()):
                await ws.close()
        for feeds in list(self.lobbies.values()):
            for ws in list(feeds):
                await ws.close()
