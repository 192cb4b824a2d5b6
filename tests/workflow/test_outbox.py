from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM, AuditEntry, verify_chain
from konsil.clock import FakeClock
from konsil.db import Database
from konsil.errors import Conflict
from tests.workflow.helpers import Workflow, stored_documents
from workflow.cda.xsd import schema_available
from workflow.connectors.cns import CnsConnector
from workflow.models import OutboxMessage
from workflow.outbox import (
    Backoff,
    Delivery,
    DeliveryResult,
    DeliveryWorker,
    WorkerSettings,
)
from workflow.simulators import cns
from workflow.simulators.common import SimulatorSettings, scripted_faults

needs_schema = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        yield session


async def start_cns(
    aiohttp_server: ServerFactory, store: Path, script: list[str | None]
) -> tuple[str, web.Application]:
    settings = SimulatorSettings(
        store=store, faults=scripted_faults(script), timeout_hang_seconds=0.6
    )
    app = cns.create_app(settings)
    server = await aiohttp_server(app)
    return str(server.make_url(cns.PATH)), app


def worker_for(wf: Workflow, url: str, http: aiohttp.ClientSession) -> DeliveryWorker:
    return DeliveryWorker(
        wf.db,
        wf.clock,
        {"cns": CnsConnector(http, url)},
        worker_id="w1",
        rng=random.Random(7),
        audit=wf.audit,
    )


async def drain(worker: DeliveryWorker, clock: FakeClock, rounds: int = 10) -> None:
    for _ in range(rounds):
        await worker.run_once()
        clock.advance(7200)


async def message(wf: Workflow, message_id: str) -> OutboxMessage:
    return (await wf.outbox.message(message_id)).message


@needs_schema
async def test_retries_through_5xx_and_timeouts_then_delivered_exactly_once(
    wf: Workflow,
    clock: FakeClock,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    # 503, a hung request (client timeout), then an answer lost after the CNS stored it
    url, _ = await start_cns(aiohttp_server, tmp_path / "cns", ["503", "timeout", "lost"])
    patient = await wf.patient(1)
    doc, msg = await wf.issue_certificate(patient)
    await drain(worker_for(wf, url, http), clock)
    view = await wf.outbox.message(msg.id)
    assert view.message.status == "delivered"
    assert [a.outcome for a in view.attempts] == ["error", "error", "error", "delivered"]
    assert [a.http_status for a in view.attempts] == [503, None, 503, 200]
    assert "Timeout" in (view.attempts[1].error or "")
    stored = stored_documents(tmp_path / "cns")
    assert len(stored) == 1  # the redelivery after the lost answer was recognised
    assert stored[0]["document_id"] == doc.id
    ack = stored[0]["acknowledgement"]
    assert isinstance(ack, dict) and view.message.remote_reference == ack["cns_reference"]
    assert (tmp_path / "cns" / f"cns-{doc.id}" / "document.xml").read_bytes() == doc.content
    async with wf.db.session() as s:
        sent = (
            (await s.execute(select(AuditEvent).where(AuditEvent.action == "document.deliver")))
            .scalars()
            .all()
        )
    assert [(e.patient_id, e.resource) for e in sent] == [(patient.id, f"document/{doc.id}")]
    assert (await verify_chain(wf.db)).ok


async def test_batched_audit_appends_keep_the_chain(wf: Workflow) -> None:
    async with wf.db.transaction() as s:
        await wf.audit.record_many(
            s, SYSTEM, [AuditEntry("x.one", patient_id="p"), AuditEntry("x.two")]
        )
        await wf.audit.record_many(s, SYSTEM, [])
        await wf.audit.record(s, SYSTEM, "x.three")
    result = await verify_chain(wf.db)
    assert result.ok and result.checked >= 3


@needs_schema
async def test_permanent_rejection_is_not_retried_and_reaches_the_author(
    wf: Workflow,
    clock: FakeClock,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    url, _ = await start_cns(aiohttp_server, tmp_path / "cns", [])
    patient, other = await wf.patient(2), await wf.patient(3)
    _, msg = await wf.issue_certificate(patient, envelope_matricule=other.matricule)
    await drain(worker_for(wf, url, http), clock)
    view = await wf.outbox.message(msg.id)
    assert view.message.status == "rejected"
    assert len(view.attempts) == 1 and view.attempts[0].http_status == 422
    assert "PATIENT_MISMATCH" in (view.message.last_error or "")
    shown = await wf.outbox.rejections_for_author(wf.author_id)
    assert [m.id for m in shown] == [msg.id]
    assert stored_documents(tmp_path / "cns") == []


@needs_schema
async def test_dead_letter_then_manual_retry(
    wf: Workflow,
    clock: FakeClock,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    url, _ = await start_cns(aiohttp_server, tmp_path / "cns", ["503"] * 4)
    patient = await wf.patient(4)
    _, msg = await wf.issue_certificate(patient)
    worker = worker_for(wf, url, http)
    await drain(worker, clock)
    dead = await message(wf, msg.id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 4, "HTTP 503")
    assert await worker.run_once() == 0  # a dead message stays put
    with pytest.raises(Conflict):
        await wf.outbox.do_retry(SYSTEM, (await wf.issue_certificate(patient))[1].id)
    await wf.outbox.do_retry(SYSTEM, msg.id)
    await drain(worker, clock)
    done = await wf.outbox.message(msg.id)
    assert done.message.status == "delivered" and len(done.attempts) == 5
    assert len(stored_documents(tmp_path / "cns")) == 2


def test_backoff_grows_exponentially_with_jitter() -> None:
    b, rng = Backoff(base_seconds=2, cap_seconds=60), random.Random(1)
    for attempt, (lo, hi) in {1: (1, 2), 2: (2, 4), 3: (4, 8), 10: (30, 60)}.items():
        delays = {b.delay(attempt, rng) for _ in range(20)}
        assert all(lo <= d <= hi for d in delays) and len(delays) > 1


class CountingTransport:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def deliver(self, d: Delivery) -> DeliveryResult:
        self.calls[d.idempotency_key] += 1
        await asyncio.sleep(0)
        return DeliveryResult("delivered", "memory:", 200, reference=d.idempotency_key)


async def test_concurrent_workers_never_send_twice(wf: Workflow, db_url: str) -> None:
    n = 300
    async with wf.db.transaction() as s:
        for i in range(n):
            await wf.outbox.enqueue(s, "cns", {"n": i}, f"k-{i}", kind="test")
    transport = CountingTransport()
    dbs = [Database(db_url), Database(db_url)]
    workers = [
        DeliveryWorker(
            d,
            wf.clock,
            {"cns": transport},
            worker_id=f"w{i}",
            settings=WorkerSettings(batch_size=25),
        )
        for i, d in enumerate(dbs)
    ]

    async def loop(w: DeliveryWorker) -> int:
        total = 0
        while handled := await w.run_once():
            total += handled
        return total

    try:
        totals = await asyncio.gather(*(loop(w) for w in workers))
    finally:
        for d in dbs:
            await d.dispose()
    assert sum(totals) == n and len(transport.calls) == n
    assert set(transport.calls.values()) == {1}
    assert (await wf.outbox.counts()) == {"delivered": n}


async def test_expired_lease_is_claimed_again(wf: Workflow, clock: FakeClock) -> None:
    async with wf.db.transaction() as s:
        await wf.outbox.enqueue(s, "cns", {}, "lease-1", kind="test")
    transport = CountingTransport()
    crashed = DeliveryWorker(wf.db, clock, {"cns": transport}, worker_id="crashed")
    assert len(await crashed.claim()) == 1  # claimed, then the process "dies"
    other = DeliveryWorker(wf.db, clock, {"cns": transport}, worker_id="other")
    assert await other.run_once() == 0  # still leased
    clock.advance(61)
    assert await other.run_once() == 1
    msg = (await wf.outbox.messages())[0].message
    assert (msg.status, msg.attempts, msg.claimed_by) == ("delivered", 2, None)


class GatedTransport:
    """Holds every delivery until released; counts the most in flight at once."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.most = 0
        self.release = asyncio.Event()

    async def deliver(self, d: Delivery) -> DeliveryResult:
        self.calls[d.idempotency_key] += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return DeliveryResult("delivered", "memory:", 200, reference=d.idempotency_key)


async def wait_for(predicate: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(2000):
        if await predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_run_keeps_the_slots_full_and_records_everything_once(wf: Workflow) -> None:
    n = 120
    async with wf.db.transaction() as s:
        for i in range(n):
            await wf.outbox.enqueue(s, "cns", {"n": i}, f"k-{i}", kind="test")
    transport = GatedTransport()
    worker = DeliveryWorker(
        wf.db,
        wf.clock,
        {"cns": transport},
        worker_id="w1",
        settings=WorkerSettings(batch_size=200, concurrency=16),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def slots_full() -> bool:
            return transport.in_flight == 16

        await wait_for(slots_full)
        # 16 in flight, never more, the rest still pending (claims ask for free slots only)
        assert (await wf.outbox.counts()) == {"in_flight": 16, "pending": n - 16}
        transport.release.set()

        async def all_delivered() -> bool:
            return (await wf.outbox.counts()) == {"delivered": n}

        await wait_for(all_delivered)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert transport.most == 16
    assert len(transport.calls) == n and set(transport.calls.values()) == {1}


async def test_run_stopped_lets_deliveries_in_flight_finish_and_records_them(
    wf: Workflow,
) -> None:
    async with wf.db.transaction() as s:
        for i in range(5):
            await wf.outbox.enqueue(s, "cns", {"n": i}, f"k-{i}", kind="test")
    transport = GatedTransport()
    worker = DeliveryWorker(wf.db, wf.clock, {"cns": transport}, worker_id="w1")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def all_in_flight() -> bool:
        return transport.in_flight == 5

    await wait_for(all_in_flight)
    stop.set()
    await asyncio.sleep(0.01)
    assert not task.done()  # waits for its deliveries
    transport.release.set()
    await asyncio.wait_for(task, timeout=10)
    assert (await wf.outbox.counts()) == {"delivered": 5}


async def test_run_claims_when_woken(wf: Workflow) -> None:
    transport = CountingTransport()
    worker = DeliveryWorker(
        wf.db,
        wf.clock,
        {"cns": transport},
        worker_id="w1",
        settings=WorkerSettings(poll_seconds=3600),  # only a wake-up makes it look again
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.05)  # idle: its first claim found nothing
        async with wf.db.transaction() as s:
            await wf.outbox.enqueue(s, "cns", {}, "woken-1", kind="test")
        worker.wake()

        async def delivered() -> bool:
            return (await wf.outbox.counts()) == {"delivered": 1}

        await wait_for(delivered)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
