"""The transactional outbox and its delivery worker.

``Outbox.enqueue`` writes a row in the caller's transaction, so a document and the message that
carries it commit (or vanish) together. ``DeliveryWorker`` claims due rows and delivers them after
commit. A claim is a lease: on PostgreSQL rows are picked with ``FOR UPDATE SKIP LOCKED`` so
concurrent workers never take the same row; on SQLite the claiming transaction is ``BEGIN
IMMEDIATE`` (one writer at a time, across processes) and the UPDATE re-checks that the row is still
due. A worker that dies leaves rows ``in_flight`` until their lease expires; another worker then
takes them again. That redelivery is harmless because every message carries its idempotency key
and receivers answer a repeated key with their first acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, cast

from sqlalchemy import Table, and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from konsil.audit.service import Actor, AuditEntry, AuditLog
from konsil.clock import Clock
from konsil.db import Database, UTCDateTime
from konsil.errors import Conflict, NotFound, ValidationError
from workflow.models import ClinicalDocument, OutboxAttempt, OutboxMessage, new_id

log = logging.getLogger(__name__)

TARGETS = ("cns", "dsp")


@dataclass(frozen=True)
class DocumentPayload:
    """The stored document a message carries, as the connectors need it."""

    id: str
    patient_id: str
    set_id: str
    version: int
    replaces_id: str | None
    type_code: str
    confidentiality: str
    mime_type: str
    created_at: datetime
    content: bytes
    sha256: str
    size: int
    signature: bytes | None
    signing_key_id: str | None


@dataclass(frozen=True)
class Delivery:
    message_id: str
    target: str
    kind: str
    idempotency_key: str
    attempt: int
    max_attempts: int
    payload: Mapping[str, Any]
    document: DocumentPayload | None


@dataclass(frozen=True)
class DeliveryResult:
    """``delivered``; ``rejected`` (permanent: never retried); ``retry`` (transient)."""

    outcome: Literal["delivered", "rejected", "retry"]
    target_url: str
    http_status: int | None = None
    reference: str | None = None
    error: str | None = None


class Transport(Protocol):
    async def deliver(self, delivery: Delivery) -> DeliveryResult: ...


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""

    base_seconds: float = 2.0
    cap_seconds: float = 3600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        full: float = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return float(full / 2 + rng.random() * full / 2)


@dataclass
class MessageView:
    message: OutboxMessage
    attempts: list[OutboxAttempt] = field(default_factory=list)


class Outbox:
    """Writing to the outbox (in the caller's transaction) and the operator's view of it."""

    def __init__(self, db: Database, clock: Clock, audit: AuditLog, *, max_attempts: int) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.max_attempts = max_attempts

    async def enqueue(
        self,
        session: AsyncSession,
        target: str,
        payload: Mapping[str, Any],
        idempotency_key: str,
        *,
        kind: str = "document",
        document_id: str | None = None,
        author_account_id: str | None = None,
    ) -> OutboxMessage:
        values = self.message_values(
            target,
            payload,
            idempotency_key,
            kind=kind,
            document_id=document_id,
            author_account_id=author_account_id,
        )
        # One Core INSERT now; objects the caller added are flushed first (the row may refer to
        # them). The returned object is not attached to the session.
        if session.new:
            await session.flush()
        await session.execute(insert(cast(Table, OutboxMessage.__table__)), values)
        return OutboxMessage(**values)

    def message_values(
        self,
        target: str,
        payload: Mapping[str, Any],
        idempotency_key: str,
        *,
        kind: str = "document",
        document_id: str | None = None,
        author_account_id: str | None = None,
    ) -> dict[str, Any]:
        """The checked column values of a new pending message (``enqueue`` inserts them)."""
        if target not in TARGETS:
            raise ValidationError("unknown outbox target", fields={"target": target})
        if not idempotency_key or len(idempotency_key) > 100:
            raise ValidationError(
                "an idempotency key is required", fields={"idempotency_key": "1-100 characters"}
            )
        now = self.clock.now()
        return {
            "id": new_id(),
            "target": target,
            "kind": kind,
            "idempotency_key": idempotency_key,
            "payload": json.dumps(dict(payload), sort_keys=True, separators=(",", ":")),
            "document_id": document_id,
            "author_account_id": author_account_id,
            "status": "pending",
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "next_attempt_at": now,
            "lease_until": None,
            "claimed_by": None,
            "created_at": now,
            "delivered_at": None,
            "remote_reference": None,
            "last_error": None,
        }

    async def messages(self, *, status: str | None = None, limit: int = 200) -> list[MessageView]:
        async with self.db.session() as s:
            q = select(OutboxMessage).order_by(OutboxMessage.created_at.desc()).limit(limit)
            if status:
                q = q.where(OutboxMessage.status == status)
            msgs = (await s.execute(q)).scalars().all()
            return await self._with_attempts(s, msgs)

    async def message(self, message_id: str) -> MessageView:
        async with self.db.session() as s:
            msg = await s.get(OutboxMessage, message_id)
            if msg is None:
                raise NotFound("no such outgoing message")
            return (await self._with_attempts(s, [msg]))[0]

    async def rejections_for_author(self, account_id: str) -> list[OutboxMessage]:
        """Permanently rejected messages about this author's documents, with the reasons."""
        async with self.db.session() as s:
            q = (
                select(OutboxMessage)
                .where(
                    OutboxMessage.author_account_id == account_id,
                    OutboxMessage.status == "rejected",
                )
                .order_by(OutboxMessage.created_at.desc())
            )
            return list((await s.execute(q)).scalars().all())

    async def counts(self, statuses: Sequence[str] | None = None) -> dict[str, int]:
        """Messages per status (only ``statuses`` when given: an index range each, not a scan of
        every message ever delivered)."""
        from sqlalchemy import func

        query = select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
        if statuses is not None:
            query = query.where(OutboxMessage.status.in_(statuses))
        async with self.db.session() as s:
            rows = await s.execute(query)
            return {str(r[0]): int(r[1]) for r in rows}

    async def do_retry(self, actor: Actor, message_id: str) -> OutboxMessage:
        """Operator: send a dead (or rejected) message again, with a fresh attempt budget."""
        async with self.db.transaction() as s:
            msg = await s.get(OutboxMessage, message_id, with_for_update=True)
            if msg is None:
                raise NotFound("no such outgoing message")
            if msg.status not in ("dead", "rejected"):
                raise Conflict(
                    "only dead or rejected messages can be retried", fields={"status": msg.status}
                )
            if msg.kind == "document" and msg.document_id is not None:
                doc = await s.get(ClinicalDocument, msg.document_id)
                if doc is not None and doc.status == "entered-in-error":
                    raise Conflict(
                        "the document was marked entered in error: it is withdrawn, not sent",
                        fields={"document": doc.status},
                    )
            msg.status = "pending"
            msg.max_attempts = msg.attempts + self.max_attempts
            msg.next_attempt_at = self.clock.now()
            msg.lease_until = None
            msg.claimed_by = None
            await self.audit.record(
                s,
                actor,
                "outbox.retry",
                resource=f"outbox/{msg.id}",
                details={"target": msg.target},
            )
            return msg

    async def _with_attempts(
        self, s: AsyncSession, msgs: Sequence[OutboxMessage]
    ) -> list[MessageView]:
        views = {m.id: MessageView(m) for m in msgs}
        if views:
            attempts = await s.execute(
                select(OutboxAttempt)
                .where(OutboxAttempt.message_id.in_(list(views)))
                .order_by(OutboxAttempt.id)
            )
            for a in attempts.scalars():
                views[a.message_id].attempts.append(a)
        return list(views.values())


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now),
        and_(OutboxMessage.status == "in_flight", OutboxMessage.lease_until < now),
    )


@dataclass(frozen=True)
class WorkerSettings:
    batch_size: int = 100  # rows per claim at most
    concurrency: int = 32  # deliveries in flight at most
    lease_seconds: float = 60.0
    poll_seconds: float = 0.25  # idle: look for due rows this often (``wake`` saves the wait)


# ``run``: outcomes are recorded once this long after the oldest unrecorded one at the latest.
RECORD_SECONDS = 0.1
# ``run``: after a claim that found fewer rows than it asked for, claim again this much later
# (or when ``wake`` is called): the rows trickle in, and an empty claim is a wasted transaction.
REFILL_SECONDS = 0.01

Outcome = tuple["Delivery", "DeliveryResult", float, datetime]


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        transports: Mapping[str, Transport],
        *,
        worker_id: str,
        settings: WorkerSettings | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.audit = audit
        self.db = db
        self.clock = clock
        self.transports = transports
        self.worker_id = worker_id
        self.settings = settings or WorkerSettings()
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._woken = False
        self._changed = asyncio.Event()  # ``run``: woken, a delivery finished, or stopping

    def wake(self) -> None:
        """Tell an idle worker that rows were committed (saves a poll interval)."""
        self._woken = True
        self._changed.set()

    async def claim(self, limit: int | None = None) -> list[Delivery]:
        """Lease up to ``limit`` (default ``batch_size``) due messages to this worker."""
        now = self.clock.now()
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        async with self.db.transaction() as s:
            q = (
                select(OutboxMessage.id)
                .where(_due(now), OutboxMessage.target.in_(list(self.transports)))
                .order_by(OutboxMessage.next_attempt_at)
                .limit(limit or self.settings.batch_size)
            )
            if not self.db.sqlite:
                q = q.with_for_update(skip_locked=True)
            ids = list((await s.execute(q)).scalars())
            if not ids:
                return []
            claimed = list(
                (
                    await s.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id.in_(ids), _due(now))
                        .values(
                            status="in_flight",
                            lease_until=lease,
                            claimed_by=self.worker_id,
                            attempts=OutboxMessage.attempts + 1,
                        )
                        .returning(OutboxMessage.id)
                    )
                ).scalars()
            )
            m, d = OutboxMessage, ClinicalDocument
            rows = (
                await s.execute(
                    # Plain columns, not ORM objects: a batch is hundreds of documents.
                    select(
                        m.id,
                        m.target,
                        m.kind,
                        m.idempotency_key,
                        m.attempts,
                        m.max_attempts,
                        m.payload,
                        *_DOC_COLUMNS,
                    )
                    .outerjoin(d, d.id == m.document_id)
                    .where(m.id.in_(claimed))
                )
            ).all()
            return [_delivery(r) for r in rows]

    async def run_once(self) -> int:
        """Claim one batch, deliver it, record the outcomes. Returns how many were handled."""
        batch = await self.claim()
        if not batch:
            return 0
        sem = asyncio.Semaphore(self.settings.concurrency)

        async def one(d: Delivery) -> Outcome:
            async with sem:
                return await self._deliver(d)

        outcomes = await asyncio.gather(*(one(d) for d in batch))
        await self._record(outcomes)
        return len(batch)

    async def _deliver(self, d: Delivery) -> Outcome:
        at = self.clock.now()
        t0 = self.clock.monotonic()
        transport = self.transports.get(d.target)
        if transport is None:
            result = DeliveryResult("retry", "", error=f"no transport for {d.target}")
        else:
            try:
                result = await transport.deliver(d)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure of one delivery is a retry
                result = DeliveryResult("retry", "", error=f"{type(exc).__name__}: {exc}"[:500])
        return d, result, (self.clock.monotonic() - t0) * 1000, at

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        now = self.clock.now()
        attempts: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        for d, r, latency_ms, at in outcomes:
            attempts.append(
                {
                    "message_id": d.message_id,
                    "number": d.attempt,
                    "at": at,
                    "worker": self.worker_id,
                    "target_url": r.target_url[:500],
                    "outcome": "error" if r.outcome == "retry" else r.outcome,
                    "http_status": r.http_status,
                    "latency_ms": round(latency_ms),
                    "error": r.error,
                }
            )
            status: str = r.outcome
            next_at = now
            if r.outcome == "retry":
                if d.attempt >= d.max_attempts:
                    status = "dead"
                else:
                    status = "pending"
                    next_at = now + timedelta(seconds=self.backoff.delay(d.attempt, self.rng))
            delivered = r.outcome == "delivered"
            changes.append(
                {
                    "b_id": d.message_id,
                    "b_status": status,
                    "b_next": next_at,
                    "b_delivered_at": now if delivered else None,
                    "b_reference": r.reference if delivered else None,
                    "b_error": None if delivered else r.error,
                }
            )
        t = cast(Table, OutboxMessage.__table__)
        # Only while the claim is still ours: after a lease expiry another worker owns the row.
        stmt = (
            update(t)
            .where(
                t.c.id == bindparam("b_id"),
                t.c.claimed_by == self.worker_id,
                t.c.status == "in_flight",
            )
            .values(
                status=bindparam("b_status"),
                next_attempt_at=bindparam("b_next", type_=UTCDateTime()),
                delivered_at=bindparam("b_delivered_at", type_=UTCDateTime()),
                remote_reference=bindparam("b_reference"),
                last_error=bindparam("b_error"),
                lease_until=None,
                claimed_by=None,
            )
        )
        async with self.db.transaction() as s:
            await s.execute(insert(cast(Table, OutboxAttempt.__table__)), attempts)
            await s.execute(stmt, changes)
            if self.audit is not None:
                # Patient data left the building: one audit event per delivered document.
                await self.audit.record_many(
                    s,
                    Actor(f"worker:{self.worker_id}"),
                    [
                        AuditEntry(
                            _DELIVERED.get(d.kind, "document.deliver"),
                            patient_id=d.document.patient_id,
                            resource=f"document/{d.document.id}",
                            details={"target": d.target, "reference": r.reference},
                        )
                        for d, r, _, _ in outcomes
                        if r.outcome == "delivered" and d.document is not None
                    ],
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, as a pipeline rather than batch by batch.

        Up to ``concurrency`` deliveries are in flight; whenever half of the slots is free (on
        SQLite: all of them), a claim tops them up (at most ``batch_size`` rows), so no batch
        waits for its slowest delivery and the receiver always has work. Outcomes are recorded
        in one transaction per half of the slots completed (SQLite: all), or ``RECORD_SECONDS``
        after the oldest, or when nothing is in flight. Idle, it claims every ``poll_seconds``
        or when woken. A failing claim is logged and tried again after ``poll_seconds``; a
        failing record is logged, and its messages are delivered again when their lease ends
        (receivers deduplicate on the idempotency key). On ``stop`` it claims nothing more,
        lets the deliveries in flight finish and records them."""
        loop = asyncio.get_running_loop()
        slots = max(1, self.settings.concurrency)
        # SQLite has one writer across processes: each claim or record stops every issuing
        # transaction, so there the worker tops up and records only a whole round of slots.
        refill = slots if self.db.sqlite else max(1, slots // 2)
        in_flight: set[asyncio.Task[Outcome]] = set()
        done: list[Outcome] = []
        oldest = 0.0  # loop time of the oldest unrecorded outcome
        next_claim = 0.0  # loop time before which no claim is tried (unless woken)
        changed = self._changed

        def finished(task: asyncio.Task[Outcome]) -> None:
            nonlocal oldest
            in_flight.discard(task)
            if not task.cancelled():
                if not done:
                    oldest = loop.time()
                done.append(task.result())
            changed.set()

        stopping = asyncio.ensure_future(stop.wait())
        stopping.add_done_callback(lambda _: changed.set())
        try:
            while not stop.is_set() or in_flight or done:
                changed.clear()  # what happens from here on wakes the wait below
                wait_until: float | None = None
                free = slots - len(in_flight)
                if not stop.is_set() and free >= refill:
                    if loop.time() >= next_claim or self._woken:
                        self._woken = False  # before the claim: a wake during it is kept
                        asked = min(free, self.settings.batch_size)
                        try:
                            batch = await self.claim(asked)
                        except Exception:
                            log.exception("outbox claim failed")
                            batch = []
                        if not batch:
                            next_claim = loop.time() + self.settings.poll_seconds
                        elif len(batch) < asked:
                            next_claim = loop.time() + REFILL_SECONDS
                        for d in batch:
                            task = asyncio.create_task(self._deliver(d))
                            in_flight.add(task)
                            task.add_done_callback(finished)
                        if len(batch) == asked and slots - len(in_flight) >= refill:
                            continue  # more may be due: claim again at once
                    wait_until = next_claim
                if done and (
                    not in_flight or len(done) >= refill or loop.time() - oldest >= RECORD_SECONDS
                ):
                    recorded, done[:] = list(done), []
                    await self._record_logged(recorded)
                    continue
                if done:
                    wait_until = min(wait_until or math.inf, oldest + RECORD_SECONDS)
                if stop.is_set() and not in_flight and not done:
                    break
                if wait_until is None:
                    await changed.wait()
                    continue
                try:
                    async with asyncio.timeout(max(0.0, wait_until - loop.time())):
                        await changed.wait()
                except TimeoutError:
                    pass
        finally:
            stopping.cancel()
            for t in list(in_flight):
                t.cancel()

    async def _record_logged(self, outcomes: Sequence[Outcome]) -> None:
        try:
            await self._record(outcomes)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording %d delivery outcomes failed", len(outcomes))


# The audit action for a delivered message of each kind (a withdrawal: workflow.withdrawal).
_DELIVERED = {"document": "document.deliver", "withdrawal": "document.withdraw"}

_DOC_COLUMNS = (
    ClinicalDocument.id.label("doc_id"),
    ClinicalDocument.patient_id,
    ClinicalDocument.set_id,
    ClinicalDocument.version,
    ClinicalDocument.replaces_id,
    ClinicalDocument.type_code,
    ClinicalDocument.confidentiality,
    ClinicalDocument.mime_type,
    ClinicalDocument.created_at,
    ClinicalDocument.content,
    ClinicalDocument.sha256,
    ClinicalDocument.size,
    ClinicalDocument.signature,
    ClinicalDocument.signing_key_id,
)


def _delivery(r: Any) -> Delivery:
    doc = None
    if r.doc_id is not None:
        doc = DocumentPayload(
            id=r.doc_id,
            patient_id=r.patient_id,
            set_id=r.set_id,
            version=r.version,
            replaces_id=r.replaces_id,
            type_code=r.type_code,
            confidentiality=r.confidentiality,
            mime_type=r.mime_type,
            created_at=r.created_at,
            content=r.content,
            sha256=r.sha256,
            size=r.size,
            signature=r.signature,
            signing_key_id=r.signing_key_id,
        )
    return Delivery(
        message_id=r.id,
        target=r.target,
        kind=r.kind,
        idempotency_key=r.idempotency_key,
        attempt=r.attempts,
        max_attempts=r.max_attempts,
        payload=json.loads(r.payload),
        document=doc,
    )
