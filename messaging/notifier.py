"""Wake-ups for long-polling ``/sync``: an interface, and the in-process implementation.

A notifier remembers, per user, the newest stream position it was told about, so that a sync
that computed an empty answer up to position P returns at once if anything newer arrived while it
was computing. A Redis-backed notifier (several workers) implements the same two methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol


class Notifier(Protocol):
    def notify(self, user_ids: Iterable[str], pos: int) -> None:
        """Something at stream ``pos`` concerns these users."""

    def latest(self, user_id: str) -> int:
        """The newest position known to concern the user (at least the start position)."""

    def head(self) -> int:
        """The newest position notified to anybody (at least the start position). Writers notify
        after they commit and stream positions commit in order, so everything up to it has
        committed."""

    def mark(self, user_ids: Iterable[str], pos: int, kind: str) -> None:
        """Called inside the writing transaction, before it commits: data of ``kind`` at ``pos``
        concerns these users. ``/sync`` skips the queries of kinds nothing was marked for."""

    def changed(self, user_id: str, kind: str) -> int:
        """The newest position marked for the user and kind (at least the start position)."""

    async def wait(self, user_id: str, after: int, timeout_s: float) -> bool:
        """Return True when something newer than ``after`` concerns the user, False after
        ``timeout_s`` seconds."""


class InProcessNotifier:
    def __init__(self, start: int = 0) -> None:
        # Before the first notification, anything up to the start position may concern anybody.
        self.start = start
        self._latest: dict[str, int] = {}
        self._kinds: dict[tuple[str, str], int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._head = start

    def head(self) -> int:
        return self._head

    def notify(self, user_ids: Iterable[str], pos: int) -> None:
        if pos > self._head:
            self._head = pos
        for user in user_ids:
            if self._latest.get(user, 0) < pos:
                self._latest[user] = pos
            for fut in self._waiters.pop(user, ()):
                if not fut.done():
                    fut.set_result(None)

    def latest(self, user_id: str) -> int:
        return max(self._latest.get(user_id, 0), self.start)

    def mark(self, user_ids: Iterable[str], pos: int, kind: str) -> None:
        for user in user_ids:
            if self._kinds.get((user, kind), 0) < pos:
                self._kinds[(user, kind)] = pos

    def changed(self, user_id: str, kind: str) -> int:
        return max(self._kinds.get((user_id, kind), 0), self.start)

    async def wait(self, user_id: str, after: int, timeout_s: float) -> bool:
        if self.latest(user_id) > after:
            return True
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(user_id, set()).add(fut)
        try:
            # the future is this call's own: awaited directly (no shield, no wait_for task), a
            # notify resumes the waiting sync in one step of the event loop
            async with asyncio.timeout(timeout_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(user_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[user_id]
