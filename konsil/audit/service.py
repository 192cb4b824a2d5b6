"""Writing and verifying the hash-chained audit log.

Each row's hash covers the previous row's hash, so editing, deleting or reordering any row breaks
the chain from that point on. Rows are appended inside the caller's transaction (the audited change
and its audit row commit together); on PostgreSQL an advisory transaction lock keeps appends in
chain order, on SQLite writes are already serialised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.models import AuditEvent
from konsil.clock import Clock, to_utc
from konsil.db import Database

GENESIS = "0" * 64
_LOCK_KEY = 0x4B4F4E53  # "KONS"


@dataclass(frozen=True)
class Actor:
    """Who acts: an account id, ``guest:<ref>`` for a patient with an invitation, or ``system``."""

    id: str
    ip: str | None = None


SYSTEM = Actor("system")


@dataclass(frozen=True)
class AuditEntry:
    """One event for ``AuditLog.record_many``."""

    action: str
    patient_id: str | None = None
    resource: str | None = None
    outcome: str = "success"
    details: Mapping[str, Any] | None = None


def row_hash(prev_hash: str, ev: AuditEvent) -> str:
    payload = json.dumps(
        [
            ev.seq,
            to_utc(ev.at).isoformat(timespec="microseconds"),
            ev.actor,
            ev.action,
            ev.patient_id,
            ev.resource,
            ev.outcome,
            ev.ip,
            ev.details,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}\n{payload}".encode()).hexdigest()


class AuditLog:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def record(
        self,
        session: AsyncSession,
        actor: Actor,
        action: str,
        *,
        patient_id: str | None = None,
        resource: str | None = None,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        last = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            )
        ).first()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ev = AuditEvent(
            seq=seq,
            at=self.clock.now(),
            actor=actor.id,
            action=action,
            patient_id=patient_id,
            resource=resource,
            outcome=outcome,
            ip=actor.ip,
            details=json.dumps(dict(details or {}), sort_keys=True, separators=(",", ":")),
            prev_hash=prev,
        )
        ev.hash = row_hash(prev, ev)
        session.add(ev)
        await session.flush()
        return ev

    async def record_many(
        self, session: AsyncSession, actor: Actor, entries: Sequence[AuditEntry]
    ) -> None:
        """Append several events at once (one lock, one read of the chain's end, one flush)."""
        if not entries:
            return
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        last = (
            await session.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            )
        ).first()
        seq, prev = (last[0], last[1]) if last else (0, GENESIS)
        now = self.clock.now()
        for e in entries:
            seq += 1
            ev = AuditEvent(
                seq=seq,
                at=now,
                actor=actor.id,
                action=e.action,
                patient_id=e.patient_id,
                resource=e.resource,
                outcome=e.outcome,
                ip=actor.ip,
                details=json.dumps(dict(e.details or {}), sort_keys=True, separators=(",", ":")),
                prev_hash=prev,
            )
            ev.hash = prev = row_hash(prev, ev)
            session.add(ev)
        await session.flush()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""


async def verify_chain(db: Database, *, batch: int = 2000) -> VerifyResult:
    """Walk the whole chain; report the first broken link."""
    expected_seq = 1
    prev = GENESIS
    checked = 0
    async with db.session() as s:
        after = 0
        while True:
            rows = (
                (
                    await s.execute(
                        select(AuditEvent)
                        .where(AuditEvent.seq > after)
                        .order_by(AuditEvent.seq)
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                break
            for ev in rows:
                if ev.seq != expected_seq:
                    return VerifyResult(
                        False, checked, expected_seq, f"row {expected_seq} is missing (deleted)"
                    )
                if ev.prev_hash != prev:
                    return VerifyResult(
                        False, checked, ev.seq, f"row {ev.seq} does not link to row {ev.seq - 1}"
                    )
                if row_hash(prev, ev) != ev.hash:
                    return VerifyResult(
                        False, checked, ev.seq, f"row {ev.seq} was changed after it was written"
                    )
                prev = ev.hash
                expected_seq += 1
                checked += 1
                after = ev.seq
            s.expunge_all()
    return VerifyResult(True, checked)
