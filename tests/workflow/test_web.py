from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from konsil import appkeys as K
from konsil.audit.service import Actor
from konsil.config import Config, WorkflowConfig
from konsil.identity.matricule import make_matricule
from tests.conftest import AiohttpClient, Client, Person, web_login
from tests.workflow.helpers import certificate_cda, stored_documents
from workflow.cda.xsd import schema_available
from workflow.documents import NewDocument
from workflow.models import new_id
from workflow.outbox import Delivery, DeliveryResult, DeliveryWorker
from workflow.simulators import cns
from workflow.simulators.common import SimulatorSettings
from workflow.web.keys import DOCUMENTS, OUTBOX, WORKER

ServerFactory = Callable[..., Awaitable[TestServer]]


class Refusing:
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    async def deliver(self, d: Delivery) -> DeliveryResult:
        if self.outcome == "rejected":
            return DeliveryResult("rejected", "https://cns.example/", 422, error="CDA_INVALID: x")
        return DeliveryResult("retry", "https://cns.example/", 503, error="HTTP 503")


async def test_trace_page_lists_attempts_and_retries_dead_messages(
    client: Client, admin: Person
) -> None:
    app = client.app
    async with app[K.DB].transaction() as s:
        dead = await app[OUTBOX].enqueue(s, "cns", {}, "trace-dead", kind="test")
        refused = await app[OUTBOX].enqueue(
            s, "dsp", {}, "trace-refused", kind="test", author_account_id=admin.account_id
        )
    for target, outcome in (("cns", "retry"), ("dsp", "rejected")):
        worker = DeliveryWorker(
            app[K.DB], app[K.CLOCK], {target: Refusing(outcome)}, worker_id="trace"
        )
        for _ in range(10):
            await worker.run_once()
            app[K.CLOCK].advance(7200)  # type: ignore[attr-defined]
    assert (await app[OUTBOX].message(dead.id)).message.status == "dead"

    assert (await client.get("/admin/outbox", allow_redirects=False)).status in (302, 303, 401)
    csrf = await web_login(client, admin)
    page = await (await client.get("/admin/outbox")).text()
    assert "trace-dead" in page and "HTTP 503" in page and "https://cns.example/" in page
    assert page.count('action="/admin/outbox/') == 2  # dead and rejected can be retried
    dead_only = await (await client.get("/admin/outbox?status=dead")).text()
    assert "trace-refused" not in dead_only
    # the admin's dashboard points at what needs a person
    dash = await (await client.get("/")).text()
    assert "Messages sortants" in dash
    assert '<a href="/admin/outbox?status=dead">dead: 1</a>' in dash
    assert '<a href="/admin/outbox?status=rejected">rejected: 1</a>' in dash

    resp = await client.post(
        f"/admin/outbox/{dead.id}/retry", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    assert (await app[OUTBOX].message(dead.id)).message.status == "pending"
    again = await client.post(
        f"/admin/outbox/{dead.id}/retry", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert again.status == 409
    forged = await client.post(f"/admin/outbox/{refused.id}/retry", data={})
    assert forged.status == 403

    # the author sees the refusal and its reason
    mine = await (await client.get("/documents/rejected")).text()
    assert "CDA_INVALID: x" in mine


@pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
async def test_server_delivers_with_its_own_worker(
    make_app: Callable[..., web.Application],  # first: its database outlives the app's worker
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    config: Config,
    tmp_path: Path,
) -> None:
    sim = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    wf = WorkflowConfig(cns_url=str(sim.make_url(cns.PATH)))
    client = await aiohttp_client(make_app(workflow=wf))
    app = client.app
    assert WORKER in app
    identity = app[K.IDENTITY]
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewPatient

    org = await identity.do_create_organisation(SYSTEM, "Clinique", "hospital")
    m = make_matricule("19800101", 5)
    from datetime import date

    patient = await identity.do_create_patient(
        SYSTEM, NewPatient(m, "Ana", "Test", date(1980, 1, 1), "F")
    )
    doc_id = new_id()
    async with app[K.DB].transaction() as s:
        doc = await app[DOCUMENTS].do_create(
            s,
            Actor("system"),
            NewDocument(
                "sick-leave",
                "DT-20002",
                patient.id,
                org.id,
                certificate_cda(m, doc_id),
                document_id=doc_id,
            ),
        )
        msg = await app[OUTBOX].enqueue(
            s, "cns", {"patient_matricule": m}, f"cns-{doc.id}", document_id=doc.id
        )
    app[WORKER].wake()
    for _ in range(200):
        if (await app[OUTBOX].message(msg.id)).message.status == "delivered":
            break
        await app[WORKER].run_once()
    assert (await app[OUTBOX].message(msg.id)).message.status == "delivered"
    assert len(stored_documents(tmp_path / "cns")) == 1
