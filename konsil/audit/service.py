"""Writing, sealing and verifying the hash-chained audit log.

Writers and the chain are decoupled so that audited transactions never wait for each other:

* ``AuditLog.record`` / ``record_many`` INSERT the event in the caller's transaction (the audited
  change and its audit row commit together). The row gets its ``seq`` from a sequence (the rowid
  on SQLite) and no hash: nothing is read, nothing is locked.
* ``seal_pending`` (run by ``AuditSealer`` inside ``konsil serve`` and ``konsil worker``, and
  first thing by ``verify_chain``) links committed, unsealed rows into the chain: one sealer at a
  time (a PostgreSQL advisory transaction lock; on SQLite the single writer), it reads the
  chain's end and the unsealed rows in ``seq`` order, gives each the next ``position`` and
  ``hash`` = SHA-256(previous hash, row fields) and commits.

Why ``position`` and not ``seq`` as the chain order: on PostgreSQL a row with a lower ``seq`` can
commit after one with a higher ``seq`` (sequence values are taken at insert, transactions commit
in any order), and rolled-back transactions leave holes in ``seq``. Chaining in ``seq`` order
would need a "safe horizon" guess; instead the chain follows the order in which the sealer *saw*
rows committed: a late row simply gets the next position in a later batch. Every committed row is
sealed exactly once (the sealer only touches rows whose ``position`` is NULL, under the lock), so
the chain is total and gap-free whatever the commit order. The hash covers ``seq`` too (rows
written before sealing existed have ``position == seq``, so their hashes are unchanged).

What it protects: once sealed, editing, deleting or reordering a row breaks the chain from that
point on. A row is unprotected between its commit and its sealing (the sealer's interval, half a
second by default; ``verify_chain`` reports how many rows are still unsealed). A crash loses
nothing: committed rows stay unsealed until the next sealer run, which seals them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.models import AuditEvent
from konsil.clock import Clock, to_utc
from konsil.db import Database, keep_on_rollback

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_LOCK_KEY = 0x4B4F4E53  # "KONS"
_TABLE = cast(Table, AuditEvent.__table__)


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


class AuditFields(Protocol):
    """The fields a row's hash covers (an ``AuditEvent`` or a Core row of the table)."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def patient_id(self) -> str | None: ...
    @property
    def resource(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def details(self) -> str: ...


def row_hash(prev_hash: str, ev: AuditFields) -> str:
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


def _details(details: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(details or {}), sort_keys=True, separators=(",", ":"))


class AuditLog:
    """Appends events in the caller's transaction (unsealed; see the module docstring)."""

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
    ) -> None:
        """Append an event inside the caller's transaction. An event that is not a success (a
        refusal, a failure) is kept even when that transaction then rolls back — typically
        because the refusal is raised inside it."""
        values = self.values(
            actor,
            action,
            patient_id=patient_id,
            resource=resource,
            outcome=outcome,
            details=details,
        )
        statement = insert(_TABLE)
        await session.execute(statement, values)
        if outcome != "success":
            keep_on_rollback(session, statement, values)

    def values(
        self,
        actor: Actor,
        action: str,
        *,
        patient_id: str | None = None,
        resource: str | None = None,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The column values ``record`` inserts, for a caller that writes the row itself (in one
        statement with the audited change); the row is unsealed like any other."""
        return {
            "at": self.clock.now(),
            "actor": actor.id,
            "action": action,
            "patient_id": patient_id,
            "resource": resource,
            "outcome": outcome,
            "ip": actor.ip,
            "details": _details(details),
        }

    async def record_many(
        self, session: AsyncSession, actor: Actor, entries: Sequence[AuditEntry]
    ) -> None:
        """Append several events with one statement."""
        if not entries:
            return
        now = self.clock.now()
        await session.execute(
            insert(_TABLE),
            [
                {
                    "at": now,
                    "actor": actor.id,
                    "action": e.action,
                    "patient_id": e.patient_id,
                    "resource": e.resource,
                    "outcome": e.outcome,
                    "ip": actor.ip,
                    "details": _details(e.details),
                }
                for e in entries
            ],
        )


async def seal_pending(db: Database, *, batch: int = 5000, wait: bool = True) -> int:
    """Link every committed, unsealed row into the chain; returns how many were sealed.

    ``wait=False``: give up at once when another sealer holds the lock (it seals our rows too).
    """
    t = _TABLE
    sealed = 0
    while True:
        async with db.transaction() as s:
            if not db.sqlite:  # SQLite: db.transaction() is already the only writer
                lock = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
                got = (await s.execute(text(f"SELECT {lock}(:k)"), {"k": _LOCK_KEY})).scalar()
                if not wait and not got:
                    return sealed
            head = (
                await s.execute(
                    select(t.c.position, t.c.hash)
                    .where(t.c.position.is_not(None))
                    .order_by(t.c.position.desc())
                    .limit(1)
                )
            ).first()
            rows = (
                await s.execute(
                    select(t).where(t.c.position.is_(None)).order_by(t.c.seq).limit(batch)
                )
            ).all()
            if not rows:
                return sealed
            position, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS)
            changes = []
            for r in rows:
                position += 1
                h = row_hash(prev, cast(AuditFields, r))
                changes.append({"b_seq": r.seq, "b_pos": position, "b_prev": prev, "b_hash": h})
                prev = h
            await s.execute(
                update(t)
                .where(t.c.seq == bindparam("b_seq"), t.c.position.is_(None))
                .values(
                    position=bindparam("b_pos"),
                    prev_hash=bindparam("b_prev"),
                    hash=bindparam("b_hash"),
                ),
                changes,
            )
        sealed += len(rows)
        if len(rows) < batch:
            return sealed


class AuditSealer:
    """Seals the chain every ``interval`` seconds until stopped (one per server/worker process)."""

    def __init__(self, db: Database, *, interval: float = 0.5) -> None:
        self.db = db
        self.interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await seal_pending(self.db, wait=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("audit sealing round failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
        try:  # what was committed while stopping
            await seal_pending(self.db, wait=False)
        except Exception:
            log.exception("audit sealing round failed")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None  # the chain position where verification failed
    reason: str = ""
    unsealed: int = 0  # committed rows not yet linked into the chain


async def verify_chain(db: Database, *, batch: int = 2000, seal: bool = True) -> VerifyResult:
    """Seal what is committed (unless ``seal=False``), then walk the whole chain.

    Reports the first broken link, or how many rows were checked and how many are unsealed.
    """
    if seal:
        await seal_pending(db)
    expected = 1
    prev = GENESIS
    checked = 0
    async with db.session() as s:
        after = 0
        while True:
            rows = (
                (
                    await s.execute(
                        select(AuditEvent)
                        .where(AuditEvent.position > after)
                        .order_by(AuditEvent.position)
                        .limit(batch)
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                break
            for ev in rows:
                if ev.position != expected:
                    return VerifyResult(
                        False, checked, expected, f"row {expected} is missing (deleted)"
                    )
                if ev.prev_hash != prev:
                    return VerifyResult(
                        False,
                        checked,
                        expected,
                        f"row {expected} does not link to row {expected - 1}",
                    )
                if row_hash(prev, ev) != ev.hash:
                    return VerifyResult(
                        False, checked, expected, f"row {expected} was changed after it was written"
                    )
                prev = ev.hash
                expected += 1
                checked += 1
                after = ev.position
            s.expunge_all()
        unsealed = (
            await s.execute(select(func.count()).where(AuditEvent.position.is_(None)))
        ).scalar_one()
    return VerifyResult(True, checked, unsealed=int(unsealed))
