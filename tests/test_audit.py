from __future__ import annotations

from sqlalchemy import delete, select, update

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import (
    Actor,
    AuditEntry,
    AuditLog,
    AuditSealer,
    seal_pending,
    verify_chain,
)
from konsil.clock import SystemClock
from konsil.db import Database
from konsil.identity.matricule import make_matricule
from tests.conftest import Client, Person, web_login


async def _patient_traffic(client: Client, admin: Person) -> str:
    await web_login(client, admin)
    resp = await client.post(
        "/api/v1/patients",
        headers={"X-CSRF-Token": await _csrf(client)},
        json={
            "matricule": make_matricule("19781124", 2),
            "given_name": "Marie",
            "family_name": "Wagner",
            "birth_date": "1978-11-24",
            "sex": "F",
        },
    )
    assert resp.status == 201, await resp.text()
    pid = (await resp.json())["id"]
    for _ in range(3):
        assert (await client.get(f"/api/v1/patients/{pid}")).status == 200
    # Rows are protected once sealed (the app's sealer does it within its interval).
    await seal_pending(client.app[K.DB])
    return str(pid)


async def _csrf(client: Client) -> str:
    from tests.conftest import csrf_from

    return await csrf_from(client, "/account/security")


async def test_every_patient_access_is_audited(client: Client, admin: Person) -> None:
    pid = await _patient_traffic(client, admin)
    db = client.app[K.DB]
    async with db.session() as s:
        rows = (
            (await s.execute(select(AuditEvent).where(AuditEvent.patient_id == pid)))
            .scalars()
            .all()
        )
    assert [r.action for r in rows] == [
        "patient.create",
        "patient.read",
        "patient.read",
        "patient.read",
    ]
    assert all(r.actor == admin.account_id and r.ip for r in rows)
    # No patient data in the audit trail itself
    assert all("Wagner" not in r.details and "19781124" not in r.details for r in rows)
    result = await verify_chain(db)
    assert result.ok and result.checked >= 6


async def test_edited_row_is_detected(client: Client, admin: Person) -> None:
    await _patient_traffic(client, admin)
    db = client.app[K.DB]
    async with db.transaction() as s:
        await s.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(actor="someone-else"))
    result = await verify_chain(db)
    assert not result.ok and result.broken_seq == 4 and "changed" in result.reason
    assert result.checked == 3


async def test_deleted_row_is_detected(client: Client, admin: Person) -> None:
    await _patient_traffic(client, admin)
    db = client.app[K.DB]
    async with db.transaction() as s:
        await s.execute(delete(AuditEvent).where(AuditEvent.seq == 3))
    result = await verify_chain(db)
    assert not result.ok and result.broken_seq == 3 and "missing" in result.reason


async def test_reordered_rows_are_detected(client: Client, admin: Person) -> None:
    await _patient_traffic(client, admin)
    db = client.app[K.DB]
    async with db.transaction() as s:
        a = await s.get(AuditEvent, 3)
        b = await s.get(AuditEvent, 4)
        assert a and b
        fields = (
            "at",
            "actor",
            "action",
            "patient_id",
            "resource",
            "outcome",
            "ip",
            "details",
            "prev_hash",
            "hash",
        )
        va = {f: getattr(a, f) for f in fields}
        vb = {f: getattr(b, f) for f in fields}
        for f in fields:
            setattr(a, f, vb[f])
            setattr(b, f, va[f])
    result = await verify_chain(db)
    assert not result.ok and result.broken_seq == 3


async def test_concurrent_appends_keep_one_chain(client: Client) -> None:
    import asyncio

    db = client.app[K.DB]
    audit = client.app[K.AUDIT]

    async def one(i: int) -> None:
        async with db.transaction() as s:
            await audit.record(s, Actor(f"a{i}"), "test.concurrent")

    await asyncio.gather(*(one(i) for i in range(40)))
    result = await verify_chain(db)
    assert result.ok and result.checked == 40


async def test_audit_page_shows_chain_state(client: Client, admin: Person) -> None:
    await web_login(client, admin)
    text = await (await client.get("/admin/audit")).text()
    assert "Chaîne vérifiée" in text and "login" in text


async def test_unsealed_rows_are_reported_then_sealed(db_url: str) -> None:
    db = Database(db_url)
    try:
        async with db.transaction() as s:
            await AuditLog(SystemClock()).record(s, Actor("a"), "test.pending")
        before = await verify_chain(db, seal=False)
        after = await verify_chain(db)
    finally:
        await db.dispose()
    assert before.ok and before.checked == 0 and before.unsealed == 1
    assert after.ok and after.checked == 1 and after.unsealed == 0


async def test_rows_committed_out_of_seq_order_are_all_chained(pg_db_url: str) -> None:
    """A transaction that took its seq first but commits last is sealed later, not lost.

    PostgreSQL only: SQLite has one writer at a time, so its commits cannot overtake each other.
    """
    import asyncio

    db = Database(pg_db_url)
    audit = AuditLog(SystemClock())
    late_may_commit = asyncio.Event()
    late_inserted = asyncio.Event()

    async def late() -> None:
        async with db.transaction() as s:
            await audit.record(s, Actor("late"), "test.order")
            late_inserted.set()
            await late_may_commit.wait()

    try:
        task = asyncio.create_task(late())
        await late_inserted.wait()
        async with db.transaction() as s:
            await audit.record(s, Actor("early"), "test.order")
        assert await seal_pending(db) == 1  # the row with the higher seq, committed first
        late_may_commit.set()
        await task
        assert await seal_pending(db) == 1
        result = await verify_chain(db)
        async with db.session() as s:
            rows = (
                await s.execute(
                    select(AuditEvent.actor, AuditEvent.seq, AuditEvent.position)
                    .where(AuditEvent.action == "test.order")
                    .order_by(AuditEvent.position)
                )
            ).all()
    finally:
        await db.dispose()
    assert result.ok and result.checked == 2 and result.unsealed == 0
    assert [r.actor for r in rows] == ["early", "late"]
    assert rows[0].seq > rows[1].seq and rows[0].position < rows[1].position


async def test_the_sealer_task_seals_what_was_committed_and_stops(db_url: str) -> None:
    """What a crashed process left unsealed is sealed by the next sealer that runs."""
    import asyncio

    db = Database(db_url)
    try:
        async with db.transaction() as s:
            await AuditLog(SystemClock()).record_many(
                s, Actor("crashed"), [AuditEntry("test.left"), AuditEntry("test.left")]
            )
        stop = asyncio.Event()
        stop.set()  # already stopped: only the final round on the way out runs
        await AuditSealer(db, interval=0.01).run(stop)
        result = await verify_chain(db, seal=False)
    finally:
        await db.dispose()
    assert result.ok and result.checked == 2 and result.unsealed == 0


async def test_a_refusal_raised_inside_its_transaction_stays_audited(db_url: str) -> None:
    """A refusal recorded and then raised in the same transaction survives the rollback; a
    success recorded in a transaction that rolls back does not."""
    from konsil.errors import Forbidden

    db = Database(db_url)
    audit = AuditLog(SystemClock())
    try:
        try:
            async with db.transaction() as s:
                await audit.record(s, Actor("acct-1", "10.0.0.1"), "thing.read", outcome="denied")
                await audit.record(s, Actor("acct-1"), "thing.touched")  # rolled back
                raise Forbidden("not yours")
        except Forbidden:
            pass
        async with db.transaction() as s:  # committed normally: written once
            await audit.record(s, Actor("acct-2"), "thing.read", outcome="denied")
        async with db.session() as s:
            rows = (await s.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars().all()
        assert [(r.actor, r.action, r.outcome, r.ip) for r in rows] == [
            ("acct-1", "thing.read", "denied", "10.0.0.1"),
            ("acct-2", "thing.read", "denied", None),
        ]
        await seal_pending(db)
        assert (await verify_chain(db)).ok
    finally:
        await db.dispose()
