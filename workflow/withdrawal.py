"""Withdrawing a document marked "entered in error" from every receiver that holds it.

Called by ``DocumentStore.do_mark_entered_in_error`` in the transaction that changes the status,
so the status and the messages commit (or vanish) together. Per target, what we know decides:

- the receiver **accepted** a version of the set (delivered message): a ``withdrawal`` message
  names the newest version it accepted (the one it shows or pays on) with its reference — XDS
  ITI-57 (Approved → Deprecated), MHD DocumentReference ``entered-in-error``, CNS cancellation;
- the document's own message was **never sent** (pending, no attempt yet): it is cancelled
  (status ``cancelled``), nothing goes out for it;
- its fate is **unknown** — in flight, or an attempt failed in a way that may have stored it (a
  lost answer, a timeout; pending for a retry, or dead): the message is cancelled so it is never
  sent again, and a withdrawal follows *after* the attempt can have arrived (lease end, or now,
  plus ``SETTLE_SECONDS``), marked ``if_held``: "nothing to withdraw" from the receiver is then
  success, not a rejection. When that receiver also holds an earlier version (the uncertain one
  is a replacement) the author is asked to wait for the answer (``Conflict``), as for corrections:
  which version the receiver shows depends on it.
- refused (rejected) everywhere: nothing to do.

Idempotency key: ``<target>-withdraw-<document id>`` (one per target and withdrawn version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.clock import Clock
from konsil.errors import Conflict
from workflow.models import ClinicalDocument, OutboxMessage

if TYPE_CHECKING:
    from workflow.outbox import Outbox

KIND = "withdrawal"
DOCUMENT = "document"
# How long an attempt that ended on our side may still be processed by the receiver.
SETTLE_SECONDS = 60.0
NOT_HELD = "not held by the receiver"


@dataclass(frozen=True)
class Planned:
    target: str
    document_id: str  # the version withdrawn at the receiver
    reference: str | None
    matricule: str  # as the receiver got it (it identifies the patient there)
    if_held: bool = False
    not_before: datetime | None = None


@dataclass(frozen=True)
class Seen:
    """A document message to cancel, as it was read (the cancellation requires it unchanged)."""

    message_id: str
    target: str
    status: str
    attempts: int


@dataclass
class WithdrawalPlan:
    withdrawals: list[Planned] = field(default_factory=list)
    cancel: list[Seen] = field(default_factory=list)

    def details(self) -> dict[str, str]:
        """For the audit row: targets only, never content."""
        return {
            "withdrawn_at": ",".join(sorted(p.target for p in self.withdrawals)),
            "cancelled_for": ",".join(sorted(c.target for c in self.cancel)),
        }


def _matricule(m: OutboxMessage) -> str:
    return str(json.loads(m.payload).get("patient_matricule") or "")


def idempotency_key(target: str, document_id: str) -> str:
    return f"{target}-withdraw-{document_id}"


async def plan_withdrawal(s: AsyncSession, doc: ClinicalDocument, now: datetime) -> WithdrawalPlan:
    """What must happen at each receiver; ``Conflict`` when it cannot be decided yet."""
    rows = (
        await s.execute(
            select(OutboxMessage, ClinicalDocument.version)
            .join(ClinicalDocument, ClinicalDocument.id == OutboxMessage.document_id)
            .where(
                ClinicalDocument.set_id == doc.set_id,
                ClinicalDocument.version <= doc.version,
                OutboxMessage.kind == DOCUMENT,
            )
            .order_by(ClinicalDocument.version, OutboxMessage.created_at)
        )
    ).all()
    mine: dict[str, OutboxMessage] = {}
    held: dict[str, tuple[str, str | None, str]] = {}  # newest accepted version per target
    for row, _version in rows:
        if row.document_id == doc.id:
            mine[row.target] = row
        if row.status == "delivered":
            assert row.document_id is not None
            held[row.target] = (row.document_id, row.remote_reference, _matricule(row))
    plan = WithdrawalPlan()
    busy: list[str] = []
    for target in sorted(set(mine) | set(held)):
        m = mine.get(target)
        if m is not None and m.status in ("pending", "in_flight", "dead"):
            if m.status == "pending" and m.attempts == 0:
                plan.cancel.append(Seen(m.id, target, m.status, 0))  # never left: nothing to undo
            else:
                earlier = held.get(target)
                if earlier is not None and earlier[0] != doc.id:
                    busy.append(target.upper())
                    continue
                plan.cancel.append(Seen(m.id, target, m.status, m.attempts))
                start = max(now, m.lease_until or now) if m.status == "in_flight" else now
                plan.withdrawals.append(
                    Planned(
                        target,
                        doc.id,
                        None,
                        _matricule(m),
                        if_held=True,
                        not_before=start + timedelta(seconds=SETTLE_SECONDS),
                    )
                )
                continue
        if target in held:
            plan.withdrawals.append(Planned(target, *held[target]))
    if busy:
        raise Conflict(
            "the correction is still being delivered: mark it entered in error once "
            f"{', '.join(busy)} acknowledged it",
            fields={"delivery": ", ".join(busy)},
        )
    return plan


async def do_withdraw(
    s: AsyncSession, outbox: Outbox, clock: Clock, doc: ClinicalDocument
) -> WithdrawalPlan:
    """Cancel what never left, queue a withdrawal wherever the document (may have) arrived."""
    plan = await plan_withdrawal(s, doc, clock.now())
    for seen in plan.cancel:
        result: CursorResult[Any] = await s.execute(  # type: ignore[assignment]
            update(OutboxMessage)
            .where(
                OutboxMessage.id == seen.message_id,
                OutboxMessage.status == seen.status,
                OutboxMessage.attempts == seen.attempts,
            )
            .values(
                status="cancelled",
                lease_until=None,
                claimed_by=None,
                last_error="cancelled: the document was marked entered in error",
            )
        )
        if result.rowcount != 1:  # a worker took it meanwhile: decide again on fresh facts
            raise Conflict(
                "the document's delivery changed meanwhile: try again",
                fields={"delivery": seen.target.upper()},
            )
    for p in plan.withdrawals:
        msg = await outbox.enqueue(
            s,
            p.target,
            {
                "patient_matricule": p.matricule,
                "withdraws": {"document_id": p.document_id, "reference": p.reference},
                "entered_in_error_id": doc.id,
                "if_held": p.if_held,
                "reason": "entered-in-error",
            },
            idempotency_key(p.target, p.document_id),
            kind=KIND,
            document_id=p.document_id,
            author_account_id=doc.author_account_id,
        )
        if p.not_before is not None:
            await s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == msg.id)
                .values(next_attempt_at=p.not_before)
            )
    return plan
