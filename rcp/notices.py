"""Notices to referring physicians: written in the transaction that publishes the report, posted
to the board's Matrix room afterwards, retried until posted.

Why a table and not a send after commit: a crash between the publishing commit and the Matrix
send would lose the notice silently. The ``rcp_notices`` row commits (or vanishes) with the
publication; ``NoticeDispatcher.deliver_due`` posts every due row — right after the publication
(an ``after_publish`` hook), then from a background loop that retries with a growing delay. The
Matrix transaction id is the notice's id, so a repeat after a crash between the send and the
``sent_at`` update is recognised by the homeserver (same sender, device and transaction id) and
answered with the first event: the physician gets one message.

What a notice carries to Matrix is only a link to the case page (no patient name, no diagnosis):
``BoardRooms.post_notice`` receives no clinical data at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor, AuditLog
from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Conflict, NotFound
from konsil.identity.models import Account
from rcp.models import Board, Notice

log = logging.getLogger(__name__)

REPORT_PUBLISHED = "report-published"
MAX_ATTEMPTS = 12
FIRST_DELAY_S = 30.0
MAX_DELAY_S = 3600.0


class BoardRooms(Protocol):
    """The boards' chat rooms (the Matrix implementation is ``rcp.matrix.MatrixBoardRooms``)."""

    async def sync(self, board_id: str) -> None:
        """Create the board's room if needed and invite whoever should be in it."""

    async def post_notice(
        self, board_id: str, recipient_account_id: str, link: str, txn_id: str
    ) -> str:
        """Post a notice mentioning the recipient with only ``link``; returns the event id.
        Posting twice with the same ``txn_id`` posts once."""


def add_notice(
    s: AsyncSession,
    *,
    case_id: str,
    board_id: str,
    recipient_account_id: str,
    kind: str,
    now: datetime,
) -> Notice:
    """Write a notice in the caller's transaction (due at once)."""
    notice = Notice(
        case_id=case_id,
        board_id=board_id,
        recipient_account_id=recipient_account_id,
        kind=kind,
        created_at=now,
        next_attempt_at=now,
        attempts=0,
    )
    s.add(notice)
    return notice


def retry_delay(attempts: int) -> float:
    return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class PendingNotice:
    """A notice not posted yet, for the operators' page (no clinical data: a case id, a board,
    a recipient and the last error)."""

    notice: Notice
    board_name: str
    recipient_name: str

    @property
    def given_up(self) -> bool:
        return self.notice.attempts >= MAX_ATTEMPTS


class NoticeDispatcher:
    def __init__(
        self, db: Database, clock: Clock, rooms: BoardRooms, base_url: str, audit: AuditLog
    ) -> None:
        self.db = db
        self.clock = clock
        self.rooms = rooms
        self.base_url = base_url.rstrip("/")
        self.audit = audit
        # one delivery round at a time in this process (the hook and the retry loop)
        self._lock = asyncio.Lock()

    def link(self, notice: Notice) -> str:
        return f"{self.base_url}/rcp/cases/{notice.case_id}"

    async def due(self, limit: int = 50) -> Sequence[Notice]:
        async with self.db.session() as s:
            rows = await s.execute(
                select(Notice)
                .where(
                    Notice.sent_at.is_(None),
                    Notice.attempts < MAX_ATTEMPTS,
                    Notice.next_attempt_at <= self.clock.now(),
                )
                .order_by(Notice.next_attempt_at)
                .limit(limit)
            )
            return rows.scalars().all()

    async def pending(self, limit: int = 200) -> list[PendingNotice]:
        """Operators: every notice not posted yet, those given up first, oldest first."""
        async with self.db.session() as s:
            rows = await s.execute(
                select(Notice, Board.name, Account.display_name)
                .join(Board, Board.id == Notice.board_id)
                .join(Account, Account.id == Notice.recipient_account_id)
                .where(Notice.sent_at.is_(None))
                .order_by((Notice.attempts >= MAX_ATTEMPTS).desc(), Notice.created_at)
                .limit(limit)
            )
            return [PendingNotice(n, board, who) for n, board, who in rows.all()]

    async def do_retry(self, actor: Actor, notice_id: str) -> Notice:
        """Operators: post a notice that was given up again, with a fresh attempt budget."""
        async with self.db.transaction() as s:
            notice = await s.get(Notice, notice_id, with_for_update=True)
            if notice is None:
                raise NotFound("no such notice")
            if notice.sent_at is not None:
                raise Conflict("this notice was posted already", fields={"status": "posted"})
            if notice.attempts < MAX_ATTEMPTS:
                raise Conflict("this notice is still being retried", fields={"status": "retrying"})
            notice.attempts = 0
            notice.next_attempt_at = self.clock.now()
            await self.audit.record(
                s, actor, "rcp.notice.retry", resource=f"rcp-notice/{notice.id}"
            )
            return notice

    async def deliver_due(self, limit: int = 50) -> int:
        """Post every due notice; returns how many were posted. Failures are recorded on the row
        (error class and message, never content) and retried later."""
        async with self._lock:
            return await self._deliver_due(limit)

    async def _deliver_due(self, limit: int) -> int:
        sent = 0
        for n in await self.due(limit):
            try:
                event_id = await self.rooms.post_notice(
                    n.board_id, n.recipient_account_id, self.link(n), f"rcp-notice-{n.id}"
                )
            except Exception as exc:
                attempts = n.attempts + 1
                log.warning("RCP notice %s not posted (attempt %d): %s", n.id, attempts, exc)
                async with self.db.transaction() as s:
                    await s.execute(
                        update(Notice)
                        .where(Notice.id == n.id, Notice.sent_at.is_(None))
                        .values(
                            attempts=attempts,
                            last_error=f"{type(exc).__name__}: {exc}"[:500],
                            next_attempt_at=self.clock.now()
                            + timedelta(seconds=retry_delay(attempts)),
                        )
                    )
                continue
            async with self.db.transaction() as s:
                await s.execute(
                    update(Notice)
                    .where(Notice.id == n.id, Notice.sent_at.is_(None))
                    .values(
                        sent_at=self.clock.now(),
                        event_id=event_id,
                        attempts=n.attempts + 1,
                        last_error=None,
                    )
                )
            sent += 1
        return sent
