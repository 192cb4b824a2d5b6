"""The in-package ``ReportPublisher``: a durable queue of signed reports awaiting delivery.

Until the workflow package (CDA builder, signature, outbox to the DSP) is merged, publishing a
signed RCP report means writing it to ``rcp_pending_publications`` in the same transaction as the
VALIDATED → PUBLISHED transition. This is not a stand-in that pretends delivery happened: the row
*is* the pending publication; the workflow adapter drains it (``drain``) and marks it delivered.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.clock import Clock
from rcp.domain.report import RcpReportData
from rcp.models import PendingPublication


class PendingPublicationQueue:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def publish(self, session: AsyncSession, report: RcpReportData) -> str:
        row = PendingPublication(
            case_id=report.case_id, report=report.to_json(), queued_at=self.clock.now()
        )
        session.add(row)
        await session.flush()
        return f"pending-publication/{row.id}"

    async def pending(self, session: AsyncSession) -> Sequence[PendingPublication]:
        rows = await session.execute(
            select(PendingPublication)
            .where(PendingPublication.drained_at.is_(None))
            .order_by(PendingPublication.queued_at)
        )
        return rows.scalars().all()

    async def mark_drained(self, session: AsyncSession, publication_id: str) -> None:
        row = await session.get(PendingPublication, publication_id, with_for_update=True)
        if row is not None and row.drained_at is None:
            row.drained_at = self.clock.now()
