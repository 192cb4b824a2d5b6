"""Entered in error, end to end: the app queues the withdrawals with the status change, its worker
delivers them (through injected outages) to the DSP (XDS ITI-57 or MHD) and CNS simulators, which
then hold the document as deprecated / cancelled; the author sees each withdrawal's fate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from konsil import appkeys as K
from konsil.clock import FakeClock
from tests.conftest import AiohttpClient, Person, csrf_from, web_login
from tests.workflow.helpers import stored_documents
from tests.workflow.test_document_views import World, make_world, token_for
from workflow.cda.xsd import schema_available
from workflow.connectors import xds
from workflow.connectors.withdrawal import NOT_HELD, update_unique_id
from workflow.models import OutboxMessage
from workflow.simulators import cns
from workflow.simulators.common import FaultPlan, scripted_faults
from workflow.web.keys import WORKER

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]
CreateUser = Callable[..., Awaitable[Person]]


class Receivers:
    def __init__(self, world: World, cns_server: TestServer, dsp_server: TestServer) -> None:
        self.world, self.cns, self.dsp = world, cns_server, dsp_server

    def stored(self, target: str) -> dict[str, dict[str, Any]]:
        return {str(m["dedupe_key"]): m for m in stored_documents(self.world.store / target)}


async def make(
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    make_app: Callable[..., web.Application],
    tmp_path: Path,
    *,
    dsp_transport: str = "xds",
    cns_faults: FaultPlan | None = None,
    dsp_faults: FaultPlan | None = None,
) -> Receivers:
    servers: dict[str, TestServer] = {}
    world = await make_world(
        aiohttp_client,
        aiohttp_server,
        make_app,
        tmp_path,
        dsp_transport=dsp_transport,
        cns_faults=cns_faults,
        dsp_faults=dsp_faults,
        servers=servers,
    )
    return Receivers(world, servers["cns"], servers["dsp"])


async def drain(world: World) -> None:
    """Deliver until nothing is pending or in flight, moving the fake clock to the next due
    attempt (backoff after an outage, the settling delay of a withdrawal)."""
    clock = world.app[K.CLOCK]
    assert isinstance(clock, FakeClock)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # real seconds: a loaded machine makes each round slower
    while loop.time() < deadline:
        async with world.app[K.DB].session() as s:
            busy = (
                await s.execute(
                    select(func.count(), func.min(OutboxMessage.next_attempt_at)).where(
                        OutboxMessage.status == "pending"
                    )
                )
            ).one()
            flying = (
                await s.execute(select(OutboxMessage.id).where(OutboxMessage.status == "in_flight"))
            ).first()
        if not busy[0] and flying is None:
            return
        if await world.app[WORKER].run_once():
            continue
        if busy[0] and busy[1] > clock.now():
            clock.advance((busy[1] - clock.now()).total_seconds())
        else:
            await asyncio.sleep(0.02)  # the app's own worker holds the claim
    raise AssertionError("the outbox never drained")


async def wait_for(world: World, document_id: str, target: str, status: str) -> OutboxMessage:
    """Until the document's message to ``target`` has ``status`` (no clock moves)."""
    for _ in range(500):
        await world.app[WORKER].run_once()
        m = (await world.messages(document_id)).get(target)
        if m is not None and m.status == status and m.attempts:
            return m
        await asyncio.sleep(0.02)
    raise AssertionError(f"{target} never became {status}")


async def withdrawals(world: World, document_id: str) -> dict[str, OutboxMessage]:
    async with world.app[K.DB].session() as s:
        rows = await s.execute(
            select(OutboxMessage).where(
                OutboxMessage.document_id == document_id, OutboxMessage.kind == "withdrawal"
            )
        )
        return {m.target: m for m in rows.scalars()}


async def test_withdrawal_reaches_xds_and_cns_through_outages(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    create_user: CreateUser,
    admin: Person,
) -> None:
    # each receiver takes the certificate, then answers the withdrawal's first attempt with 503
    r = await make(
        aiohttp_client,
        aiohttp_server,
        make_app,
        tmp_path,
        cns_faults=scripted_faults([None, "503"]),
        dsp_faults=scripted_faults([None, "503"]),
    )
    world = r.world
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    await drain(world)
    ref = {t: m.remote_reference for t, m in (await world.messages(cert.id)).items()}

    h = await token_for(world, dr_a)
    resp = await world.client.post(f"/api/v1/documents/{cert.id}/entered-in-error", headers=h)
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "entered-in-error"
    queued = {(d["target"], d["kind"]): d["status"] for d in body["deliveries"]}
    assert queued[("cns", "withdrawal")] in ("pending", "in_flight", "delivered")
    assert queued[("cns", "document")] == "delivered"

    await drain(world)
    sent = await withdrawals(world, cert.id)
    assert {t: (m.status, m.attempts) for t, m in sent.items()} == {
        "cns": ("delivered", 2),
        "dsp": ("delivered", 2),
    }
    assert sent["dsp"].remote_reference == update_unique_id(f"dsp-withdraw-{cert.id}")
    cns_ref = sent["cns"].remote_reference or ""
    assert cns_ref.startswith("CNS-ANN-")

    # the receivers hold it as cancelled / deprecated
    certificate = r.stored("cns")[f"cns-{cert.id}"]
    assert certificate["status"] == "cancelled" and certificate["cancelled_by"] == cns_ref
    assert r.stored("cns")[f"cns-withdraw-{cert.id}"]["cns_reference"] == ref["cns"]
    entry = r.stored("dsp")[xds.oid_of(cert.id)]
    assert entry["availability"] == "Deprecated"
    assert entry["withdrawn_by"] == sent["dsp"].remote_reference

    # audited: the status change with its withdrawals, each delivered withdrawal
    [marked] = await world.audit("document.entered-in-error", f"document/{cert.id}")
    assert json.loads(marked.details or "{}")["withdrawn_at"] == "cns,dsp"
    delivered = await world.audit("document.withdraw", f"document/{cert.id}")
    assert sorted(json.loads(e.details or "{}")["target"] for e in delivered) == ["cns", "dsp"]

    # the author's page shows each withdrawal; the patient's list marks the document
    await web_login(world.client, dr_a)
    page = await (await world.client.get(f"/documents/{cert.id}")).text()
    assert 'id="withdrawn"' in page
    # (the page is in French: "CNS retrait: delivered (…)")
    assert f'data-kind="withdrawal">CNS retrait: delivered ({cns_ref})' in page
    assert 'data-kind="withdrawal">DSP retrait: delivered' in page
    assert 'id="correct"' not in page  # nothing more to do with it
    listing = await (await world.client.get(f"/patients/{world.anne.id}/documents")).text()
    assert f'id="doc-{cert.id}" class="withdrawn"' in listing
    # the operator's trace shows the failed attempt and the delivered one
    await web_login(world.client, admin)
    trace = await (await world.client.get("/admin/outbox")).text()
    assert "CNS · withdrawal · " in trace and "simulated outage" not in trace  # no content
    assert "HTTP 503" in trace


async def test_mhd_withdrawal_marks_the_document_reference(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    create_user: CreateUser,
) -> None:
    r = await make(aiohttp_client, aiohttp_server, make_app, tmp_path, dsp_transport="mhd")
    world = r.world
    dr_a = await create_user("dra")
    report = await world.issue(dr_a, world.anne, kind="teleconsultation-report")
    await drain(world)
    await web_login(world.client, dr_a)
    csrf = await csrf_from(world.client, f"/documents/{report.id}")
    resp = await world.client.post(
        f"/documents/{report.id}/entered-in-error",
        data={"csrf_token": csrf},
        allow_redirects=False,
    )
    assert resp.status == 303
    await drain(world)
    [(target, w)] = (await withdrawals(world, report.id)).items()
    assert (target, w.status) == ("dsp", "delivered")
    assert (w.remote_reference or "").startswith("DocumentReference/")
    entry = r.stored("dsp")[xds.oid_of(report.id)]
    assert (entry["status"], entry["availability"]) == ("entered-in-error", "Deprecated")
    assert r.stored("dsp")[entry["withdrawn_by"]]["transport"] == "ITI-65 update"
    h = await token_for(world, dr_a)
    one = await (await world.client.get(f"/api/v1/documents/{report.id}", headers=h)).json()
    assert {(d["target"], d["kind"], d["status"]) for d in one["deliveries"]} == {
        ("dsp", "document", "delivered"),
        ("dsp", "withdrawal", "delivered"),
    }


async def test_lost_answer_the_withdrawal_follows_the_document(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    create_user: CreateUser,
) -> None:
    """The DSP stored the report but its answer was lost: the report is never sent again, the
    withdrawal goes after the settling delay and finds it."""
    r = await make(
        aiohttp_client, aiohttp_server, make_app, tmp_path, dsp_faults=scripted_faults(["lost"])
    )
    world = r.world
    dr_a = await create_user("dra")
    report = await world.issue(dr_a, world.anne, kind="teleconsultation-report")
    await wait_for(world, report.id, "dsp", "pending")  # 503 after storing: a retry is due
    assert xds.oid_of(report.id) in r.stored("dsp")
    h = await token_for(world, dr_a)
    resp = await world.client.post(f"/api/v1/documents/{report.id}/entered-in-error", headers=h)
    assert resp.status == 200
    assert (await world.messages(report.id))["dsp"].status == "cancelled"
    await drain(world)
    w = (await withdrawals(world, report.id))["dsp"]
    assert json.loads(w.payload)["if_held"] is True
    assert w.status == "delivered" and w.remote_reference not in (None, NOT_HELD)
    assert r.stored("dsp")[xds.oid_of(report.id)]["availability"] == "Deprecated"
    original = (await world.messages(report.id))["dsp"]
    assert (original.status, original.attempts) == ("cancelled", 1)  # never sent again


async def test_rejected_withdrawal_goes_to_the_author(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    create_user: CreateUser,
) -> None:
    r = await make(aiohttp_client, aiohttp_server, make_app, tmp_path)
    world = r.world
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    await drain(world)
    # meanwhile a CNS case handler cancelled the certificate on their side
    r.cns.app[cns.STORE].annotate(f"cns-{cert.id}", {"status": "cancelled"})
    h = await token_for(world, dr_a)
    await world.client.post(f"/api/v1/documents/{cert.id}/entered-in-error", headers=h)
    await drain(world)
    sent = await withdrawals(world, cert.id)
    assert {t: m.status for t, m in sent.items()} == {"cns": "rejected", "dsp": "delivered"}
    assert "ALREADY_CANCELLED" in (sent["cns"].last_error or "")
    assert sent["cns"].attempts == 1  # a refusal is never retried

    await web_login(world.client, dr_a)
    rejected = await (await world.client.get("/documents/rejected")).text()
    assert "CNS retrait" in rejected and "ALREADY_CANCELLED" in rejected
    page = await (await world.client.get(f"/documents/{cert.id}")).text()
    assert "CNS withdrawal: ALREADY_CANCELLED" in page
    one = await (await world.client.get(f"/api/v1/documents/{cert.id}", headers=h)).json()
    assert one["rejection"].startswith("CNS withdrawal: ALREADY_CANCELLED")
