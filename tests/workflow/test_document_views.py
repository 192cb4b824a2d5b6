"""The author's view, a patient's documents, downloads, corrections and their delivery.

A real app with its in-process worker delivers to real DSP (XDS.b or MHD) and CNS simulators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.audit.service import SYSTEM, Actor
from konsil.config import WorkflowConfig
from konsil.identity.matricule import make_matricule
from konsil.identity.models import Organisation, Patient
from konsil.identity.service import NewPatient
from tests.conftest import AiohttpClient, Client, Person, csrf_from, web_login
from tests.workflow import samples
from tests.workflow.helpers import (
    certificate_cda,
    deliver_all,
    prescription_cda,
    stored_documents,
    teleconsultation_cda,
)
from workflow.cda import codes
from workflow.cda.reading import read_header, read_sick_leave
from workflow.cda.xsd import schema_available
from workflow.corrections import CORRECTABLE, LINE_FIELDS
from workflow.documents import DEFAULT_TARGETS, DELIVERY_TARGETS, NewDocument
from workflow.models import ClinicalDocument, OutboxMessage, new_id
from workflow.signing import verifier_for
from workflow.simulators import cns, dsp
from workflow.simulators.common import FaultPlan, SimulatorSettings
from workflow.web.documents import CORRECTION_SCHEMAS
from workflow.web.keys import DOCUMENTS, OUTBOX

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
ServerFactory = Callable[..., Awaitable[TestServer]]
CreateUser = Callable[..., Awaitable[Person]]
# What each issuer signs (a document's CDA carries its id: built for the matricule and the id).
ISSUED: dict[str, Callable[[str, str], bytes]] = {
    "sick-leave": certificate_cda,
    "teleconsultation-report": teleconsultation_cda,
    "prescription": prescription_cda,
}


@dataclasses.dataclass
class World:
    client: Client
    store: Path  # the simulators' stores: store/cns, store/dsp
    org: Organisation
    anne: Patient
    jean: Patient

    @property
    def app(self) -> web.Application:
        return self.client.app

    async def issue(
        self,
        author: Person,
        patient: Patient,
        *,
        kind: str = "sick-leave",
        confidentiality: str = "N",
        cns_matricule: str | None = None,  # another patient's: the CNS refuses the certificate
        build: Callable[[str, str], bytes] | None = None,  # (matricule, id) → CDA of ``kind``
    ) -> ClinicalDocument:
        """What the issuers do: store a signed document and queue it, in one transaction (to the
        targets of its kind: certificates CNS + DSP, other documents DSP)."""
        doc_id = new_id()
        content = (build or ISSUED[kind])(patient.matricule, doc_id)
        type_code = codes.BY_KIND[kind].code
        targets = DELIVERY_TARGETS.get(kind, DEFAULT_TARGETS)
        async with self.app[K.DB].transaction() as s:
            doc = await self.app[DOCUMENTS].do_create(
                s,
                Actor(author.account_id),
                NewDocument(
                    kind,
                    type_code,
                    patient.id,
                    self.org.id,
                    content,
                    author_account_id=author.account_id,
                    confidentiality=confidentiality,
                    document_id=doc_id,
                ),
            )
            for target in targets:
                matricule = (cns_matricule if target == "cns" else None) or patient.matricule
                await self.app[OUTBOX].enqueue(
                    s,
                    target,
                    {"patient_matricule": matricule},
                    f"{target}-{doc.id}",
                    document_id=doc.id,
                    author_account_id=author.account_id,
                )
        return doc

    async def deliver_all(self) -> None:
        await deliver_all(self.app)

    async def messages(self, document_id: str) -> dict[str, OutboxMessage]:
        """The messages carrying the document (not withdrawals of it), per target."""
        async with self.app[K.DB].session() as s:
            rows = await s.execute(
                select(OutboxMessage).where(
                    OutboxMessage.document_id == document_id, OutboxMessage.kind == "document"
                )
            )
            return {m.target: m for m in rows.scalars()}

    async def document(self, document_id: str) -> ClinicalDocument:
        async with self.app[K.DB].session() as s:
            doc = await s.get(ClinicalDocument, document_id)
            assert doc is not None
            return doc

    async def audit(self, action: str, resource: str) -> list[AuditEvent]:
        async with self.app[K.DB].session() as s:
            rows = await s.execute(
                select(AuditEvent).where(
                    AuditEvent.action == action, AuditEvent.resource == resource
                )
            )
            return list(rows.scalars())

    def stored(self, target: str) -> dict[str, dict[str, Any]]:
        """The documents a receiver stored (not the withdrawals it stored beside them)."""
        key = "document_id" if target == "cns" else "entry_uuid"
        return {str(m[key]): m for m in stored_documents(self.store / target) if key in m}


async def make_world(
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    make_app: Callable[..., web.Application],
    tmp_path: Path,
    *,
    dsp_transport: str = "xds",
    cns_faults: FaultPlan | None = None,
    dsp_faults: FaultPlan | None = None,
    servers: dict[str, TestServer] | None = None,
) -> World:
    """The app delivering to real DSP and CNS simulators (with these fault plans; their test
    servers put in ``servers`` when given), a practice and two patients."""

    def settings(name: str, faults: FaultPlan | None) -> SimulatorSettings:
        s = SimulatorSettings(tmp_path / "store" / name)
        if faults is not None:
            s.faults = faults
        return s

    cns_sim = await aiohttp_server(cns.create_app(settings("cns", cns_faults)))
    dsp_sim = await aiohttp_server(dsp.create_app(settings("dsp", dsp_faults)))
    if servers is not None:
        servers.update(cns=cns_sim, dsp=dsp_sim)
    path = dsp.MHD_PATH if dsp_transport == "mhd" else dsp.ITI41_PATH
    wf = WorkflowConfig(
        cns_url=str(cns_sim.make_url(cns.PATH)),
        dsp_url=str(dsp_sim.make_url(path)),
        dsp_transport=dsp_transport,
    )
    client = await aiohttp_client(make_app(workflow=wf))
    app = client.app
    # certificates start on 27/11/2026: the correction is made the same day
    clock = app[K.CLOCK]
    clock.advance((samples.NOW - clock.now()).total_seconds())  # type: ignore[attr-defined]
    identity = app[K.IDENTITY]
    org = await identity.do_create_organisation(SYSTEM, "Cabinet Test", "practice")
    anne = await identity.do_create_patient(
        SYSTEM, NewPatient(make_matricule("19650312", 1), "Anne", "Schmit", date(1965, 3, 12), "F")
    )
    jean = await identity.do_create_patient(
        SYSTEM, NewPatient(make_matricule("19781124", 2), "Jean", "Weber", date(1978, 11, 24), "M")
    )
    return World(client, tmp_path / "store", org, anne, jean)


async def token_for(world: World, person: Person) -> dict[str, str]:
    token = await world.app[K.AUTH].do_issue_api_token(SYSTEM, person.username, "tests", 30)
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- the author's view


async def test_author_lists_opens_and_downloads_only_their_documents(
    world: World, create_user: CreateUser
) -> None:
    dr_a, dr_b = await create_user("dra"), await create_user("drb")
    cert = await world.issue(dr_a, world.anne)
    report = await world.issue(dr_a, world.anne, kind="teleconsultation-report")
    # about a patient dr_a never cared for
    other = await world.issue(dr_b, world.jean, kind="teleconsultation-report")
    await world.deliver_all()

    assert (await world.client.get("/documents", allow_redirects=False)).status in (302, 303)
    await web_login(world.client, dr_a)
    page = await (await world.client.get("/documents")).text()
    assert f"doc-{cert.id}" in page and f"doc-{report.id}" in page
    assert f"doc-{other.id}" not in page
    assert "Anne Schmit" in page and "CNS: delivered (CNS-CIT-" in page
    only_certs = await (await world.client.get("/documents?kind=sick-leave")).text()
    assert f"doc-{cert.id}" in only_certs and f"doc-{report.id}" not in only_certs
    none = await (await world.client.get("/documents?status=amended")).text()
    assert f"doc-{cert.id}" not in none
    bad = await world.client.get("/documents?status=lost")
    assert bad.status == 400 and "amended" in await bad.text()
    assert len(await world.audit("document.list", f"document/{cert.id}")) >= 2

    # the dashboard links to the view
    dash = await (await world.client.get("/")).text()
    assert 'href="/documents"' in dash and f"/documents/{cert.id}" in dash

    detail = await world.client.get(f"/documents/{cert.id}")
    html = await detail.text()
    assert detail.status == 200
    assert "Grippe" in html and 'id="correct"' in html
    assert "/pdf?copy=employer" in html

    cda = await world.client.get(f"/documents/{cert.id}/cda")
    assert await cda.read() == cert.content
    assert "attachment" in cda.headers["Content-Disposition"]
    sig = await (await world.client.get(f"/documents/{cert.id}/signature")).read()
    async with world.app[K.DB].session() as s:
        verifier = await verifier_for(s, cert.signing_key_id or "")
    assert verifier is not None and verifier.verify(cert.content, sig)
    assert not verifier.verify(cert.content[:-2] + b"X\n", sig)
    for copy in ("patient", "employer"):
        pdf = await world.client.get(f"/documents/{cert.id}/pdf?copy={copy}")
        assert pdf.status == 200 and (await pdf.read()).startswith(b"%PDF")
    narrative = await world.client.get(f"/documents/{report.id}/pdf")
    assert (await narrative.read()).startswith(b"%PDF")
    assert (await world.client.get(f"/documents/{cert.id}/pdf?copy=boss")).status == 400
    assert len(await world.audit("document.print", f"document/{cert.id}")) == 2
    assert len(await world.audit("document.download", f"document/{cert.id}")) == 2

    # someone else's document: as if it did not exist, and the attempt is audited
    for path in (f"/documents/{other.id}", f"/documents/{other.id}/cda"):
        assert (await world.client.get(path)).status == 404
    denied = await world.audit("document.read", f"document/{other.id}")
    assert [e.outcome for e in denied] == ["denied"]
    assert (await world.client.get(f"/documents/{new_id()}")).status == 404


async def test_author_api(world: World, create_user: CreateUser) -> None:
    dr_a, dr_b = await create_user("dra"), await create_user("drb")
    cert = await world.issue(dr_a, world.anne)
    await world.deliver_all()
    h = await token_for(world, dr_a)
    assert (await world.client.get("/api/v1/documents")).status == 401
    listing = await (await world.client.get("/api/v1/documents", headers=h)).json()
    [item] = listing["documents"]
    assert item["id"] == cert.id and item["status"] == "final"
    assert {d["target"]: d["status"] for d in item["deliveries"]} == {
        "cns": "delivered",
        "dsp": "delivered",
    }
    assert item["patient"]["matricule"] == world.anne.matricule
    one = await (await world.client.get(f"/api/v1/documents/{cert.id}", headers=h)).json()
    assert one["versions"] == [{"id": cert.id, "version": 1, "status": "final"}]
    cda = await world.client.get(one["links"]["cda"], headers=h)
    assert await cda.read() == cert.content
    newest = await world.client.get("/api/v1/documents?limit=1", headers=h)
    assert len((await newest.json())["documents"]) == 1
    assert (await world.client.get("/api/v1/documents?limit=0", headers=h)).status == 400
    bad = await world.client.get("/api/v1/documents?kind=letter", headers=h)
    assert bad.status == 400 and bad.content_type == "application/problem+json"
    other = await world.client.get(
        f"/api/v1/documents/{cert.id}", headers=await token_for(world, dr_b)
    )
    assert other.status == 404 and other.content_type == "application/problem+json"

    spec = await (await world.client.get("/api/v1/openapi.json")).json()
    for path in (
        "/api/v1/documents",
        "/api/v1/documents/{id}",
        "/api/v1/documents/{id}/corrections",
        "/api/v1/documents/{id}/entered-in-error",
        "/api/v1/patients/{patient_id}/documents",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/api/v1/documents/{id}/corrections"]["post"]["requestBody"]
    one_of = body["content"]["application/json"]["schema"]["oneOf"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in one_of] == [
        "SickLeaveCorrection",
        "TeleconsultationCorrection",
        "PrescriptionCorrection",
    ]
    assert all(ref["$ref"].rsplit("/", 1)[1] in schemas for ref in one_of)
    assert set(CORRECTION_SCHEMAS) == set(CORRECTABLE)  # every kind corrected has its schema
    line = schemas["PrescriptionLine"]["properties"]
    assert set(line) == {"medication", *LINE_FIELDS} - {"medication.atc", "medication.name"}


async def test_listings_page_by_cursor(world: World, create_user: CreateUser) -> None:
    """Keyset paging: every document exactly once, newest first (ties broken by id), a document
    added meanwhile shifts nothing, only the rows shown are audited, a forged cursor is a 400."""
    dr_a = await create_user("dra")
    docs = [await world.issue(dr_a, world.anne, kind="teleconsultation-report") for _ in range(5)]
    # the test clock stands still: all five share created_at, so the id breaks the tie
    expected = [d.id for d in sorted(docs, key=lambda d: (d.created_at, d.id), reverse=True)]
    h = await token_for(world, dr_a)
    seen: list[str] = []
    url: str | None = "/api/v1/documents?limit=2&kind=teleconsultation-report"
    pages = 0
    while url is not None:
        page = await (await world.client.get(url, headers=h)).json()
        seen += [d["id"] for d in page["documents"]]
        pages += 1
        if pages == 1:  # a document issued between two pages lands before the first page
            world.app[K.CLOCK].advance(60)  # type: ignore[attr-defined]
            later = await world.issue(dr_a, world.anne, kind="teleconsultation-report")
        url = page["links"]["next"]
        assert (url is None) == (page["next_cursor"] is None)
        if url is not None:
            assert "kind=teleconsultation-report" in url and "limit=2" in url
    assert seen == expected and pages == 3
    async with world.app[K.DB].session() as s:
        listed = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "document.list"))
        ).scalars()
        assert sorted(e.resource or "" for e in listed) == sorted(f"document/{i}" for i in seen)
    first = await (await world.client.get("/api/v1/documents?limit=2", headers=h)).json()
    assert first["documents"][0]["id"] == later.id

    # the patient's listing pages the same way
    path = f"/api/v1/patients/{world.anne.id}/documents?limit=4"
    one = await (await world.client.get(path, headers=h)).json()
    two = await (await world.client.get(one["links"]["next"], headers=h)).json()
    assert [d["id"] for d in one["documents"] + two["documents"]] == [later.id, *expected]
    assert two["next_cursor"] is None

    for forged in ("nonsense", "MjAyNnxhYmM", first["next_cursor"] + "x"):
        bad = await world.client.get(f"/api/v1/documents?after={forged}", headers=h)
        assert bad.status == 400, forged
        assert bad.content_type == "application/problem+json"

    # the page links to older documents, filters kept
    await web_login(world.client, dr_a)
    html = await (await world.client.get("/documents?limit=2&kind=teleconsultation-report")).text()
    assert 'rel="next"' in html and "Documents plus anciens" in html
    assert "kind=teleconsultation-report" in html
    last = await (await world.client.get("/documents?limit=10")).text()
    assert 'rel="next"' not in last


async def test_rejection_reason_is_shown_to_the_author(
    world: World, create_user: CreateUser
) -> None:
    dr_a = await create_user("dra")
    # a CNS rejection (what the simulator answers for an envelope naming another patient)
    await world.issue(dr_a, world.anne, cns_matricule=world.jean.matricule)
    await world.deliver_all()
    await web_login(world.client, dr_a)
    page = await (await world.client.get("/documents")).text()
    assert "PATIENT_MISMATCH" in page and "CNS: rejected" in page


# ---------------------------------------------------------------- a patient's documents


async def test_patient_documents_need_a_care_relationship(
    world: World, create_user: CreateUser, admin: Person
) -> None:
    dr_a, dr_b = await create_user("dra"), await create_user("drb")
    coordinator = await create_user("coord", "coordinator")
    cert = await world.issue(dr_a, world.anne)
    secret = await world.issue(
        dr_a, world.anne, kind="teleconsultation-report", confidentiality="V"
    )
    path = f"/patients/{world.anne.id}/documents"

    ha, hb = await token_for(world, dr_a), await token_for(world, dr_b)
    hc = await token_for(world, coordinator)
    mine = await (await world.client.get("/api/v1" + path, headers=ha)).json()
    assert {d["id"] for d in mine["documents"]} == {cert.id, secret.id}
    for h in (hb, hc):
        refused = await world.client.get("/api/v1" + path, headers=h)
        assert refused.status == 403
    denied = await world.audit("patient.documents", f"patient/{world.anne.id}")
    assert [e.outcome for e in denied] == ["denied", "denied"]
    assert (
        await world.client.get(f"/api/v1/patients/{new_id()}/documents", headers=ha)
    ).status == 404

    # once dr_b has cared for Anne (authored a document about her), dr_b sees her documents…
    own = await world.issue(dr_b, world.anne, kind="teleconsultation-report")
    seen = await (await world.client.get("/api/v1" + path, headers=hb)).json()
    assert {d["id"] for d in seen["documents"]} == {cert.id, own.id}  # …but not the V one
    assert (await world.client.get(f"/api/v1/documents/{cert.id}", headers=hb)).status == 200
    assert (await world.client.get(f"/api/v1/documents/{secret.id}", headers=hb)).status == 404
    # and may not correct a colleague's document
    fix = await world.client.post(f"/api/v1/documents/{cert.id}/entered-in-error", headers=hb)
    assert fix.status == 403

    # the admin's page, reached from the patient search
    await web_login(world.client, admin)
    search = await (await world.client.get("/patients?q=Schmit")).text()
    assert f'href="{path}"' in search
    page = await world.client.get(path)
    html = await page.text()
    assert page.status == 200 and f"doc-{cert.id}" in html and f"doc-{secret.id}" not in html
    assert "Dra" in html  # the author's name


# ---------------------------------------------------------------- corrections


async def test_correction_is_delivered_as_a_replacement(
    world: World, create_user: CreateUser
) -> None:
    dr_a, dr_b = await create_user("dra"), await create_user("drb")
    cert = await world.issue(dr_a, world.anne)

    csrf = await web_login(world.client, dr_a)
    form = await (await world.client.get(f"/documents/{cert.id}/correct")).text()
    assert 'value="2026-12-03"' in form and 'value="J11.1"' in form
    fields = {
        "csrf_token": csrf,
        "kind": "illness",
        "start": "2026-11-27",
        "end": "2026-12-06",
        "diagnosis.code": "J11.1",
        "diagnosis.label": "Grippe",
        "outings_allowed": "1",
    }
    await world.deliver_all()

    wrong = await world.client.post(
        f"/documents/{cert.id}/correct", data={**fields, "end": "2026-11-20"}
    )
    text = await wrong.text()
    assert wrong.status == 400 and 'id="e-end"' in text
    assert "l&#39;incapacité se termine avant de commencer" in text  # French first
    assert (await world.document(cert.id)).status == "final"

    resp = await world.client.post(
        f"/documents/{cert.id}/correct", data=fields, allow_redirects=False
    )
    assert resp.status == 303
    new_id_ = resp.headers["Location"].split("/")[2].split("?")[0]
    new = await world.document(new_id_)
    old = await world.document(cert.id)
    assert (old.status, new.status, new.version, new.replaces_id) == (
        "amended",
        "final",
        2,
        cert.id,
    )
    assert new.set_id == old.set_id and new.signature is not None
    value = read_sick_leave(new.content)
    assert value.end == date(2026, 12, 6) and value.outings_allowed
    header = read_header(new.content).header
    assert header.replaces is not None and header.replaces.parent_version == 1
    assert header.set_id == read_header(cert.content).header.set_id
    queued = await world.messages(new.id)
    assert set(queued) == {"cns", "dsp"}  # queued with the document, in its transaction

    await world.deliver_all()
    assert {t: m.status for t, m in (await world.messages(new.id)).items()} == {
        "cns": "delivered",
        "dsp": "delivered",
    }
    cns_store = world.stored("cns")
    assert cns_store[new.id]["replaces"]["document_id"] == cert.id
    assert cns_store[new.id]["replaces"]["cns_reference"].startswith("CNS-CIT-")
    assert cns_store[cert.id]["replaced_by"] == new.id
    dsp_store = world.stored("dsp")
    old_entry = next(m for m in dsp_store.values() if m["entry_uuid"].endswith(cert.id[-12:]))
    new_entry = next(m for m in dsp_store.values() if m["entry_uuid"].endswith(new.id[-12:]))
    assert new_entry["replaces_entry_uuid"] == old_entry["entry_uuid"]
    assert old_entry["availability"] == "Deprecated"
    assert old_entry["replaced_by"] == new_entry["unique_id"]

    page = await (await world.client.get(f"/documents/{new.id}")).text()
    assert "v1 · amended" in page and f'href="/documents/{cert.id}"' in page
    # the old version can no longer be corrected, printed or corrected twice
    again = await world.client.post(f"/documents/{cert.id}/correct", data=fields)
    assert again.status == 409
    assert (await world.client.get(f"/documents/{cert.id}/pdf")).status == 409
    # only its author corrects it
    await web_login(world.client, dr_b)
    assert (await world.client.get(f"/documents/{new.id}/correct")).status == 404


async def test_correction_api_and_entered_in_error(world: World, create_user: CreateUser) -> None:
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    report = await world.issue(dr_a, world.jean, kind="teleconsultation-report")
    await world.deliver_all()
    h = await token_for(world, dr_a)
    bad = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={"kind": "accident", "start": "2026-11-27", "end": "2026-11-30"},
        headers=h,
    )
    problem = await bad.json()
    assert bad.status == 400 and "accident" in problem["errors"], problem
    # a certificate's fields are not a report's: refused by name, nothing written
    not_cert = await world.client.post(
        f"/api/v1/documents/{report.id}/corrections",
        json={"kind": "illness", "start": "2026-11-27", "end": "2026-11-30"},
        headers=h,
    )
    assert not_cert.status == 400
    assert (await not_cert.json())["errors"] == {
        "kind": "is not a field of this document",
        "start": "is recorded from the call and cannot be corrected",
        "end": "is recorded from the call and cannot be corrected",
    }
    assert (await world.document(report.id)).status == "final"
    ok = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={
            "kind": "illness",
            "start": "2026-11-27",
            "end": "2026-11-30",
            "diagnosis": {"code": "J06.9", "label": "Rhinopharyngite"},
        },
        headers=h,
    )
    new = await ok.json()
    assert ok.status == 201 and new["version"] == 2 and new["replaces_id"] == cert.id
    assert {d["target"] for d in new["deliveries"]} == {"cns", "dsp"}
    assert all(d["replaces"] for d in new["deliveries"])

    withdrawn = await world.client.post(
        f"/api/v1/documents/{report.id}/entered-in-error", headers=h
    )
    assert (await withdrawn.json())["status"] == "entered-in-error"
    twice = await world.client.post(f"/api/v1/documents/{report.id}/entered-in-error", headers=h)
    assert twice.status == 409
    assert len(await world.audit("document.entered-in-error", f"document/{report.id}")) == 1

    # the page form does the same, with its CSRF token
    await web_login(world.client, dr_a)
    csrf = await csrf_from(world.client, f"/documents/{new['id']}")
    resp = await world.client.post(
        f"/documents/{new['id']}/entered-in-error",
        data={"csrf_token": csrf},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert (await world.document(new["id"])).status == "entered-in-error"
    forged = await world.client.post(f"/documents/{cert.id}/entered-in-error", data={})
    assert forged.status == 403


async def test_replacement_of_a_refused_original_goes_as_an_original(
    world: World, create_user: CreateUser
) -> None:
    """The CNS refused the first version: the corrected one is a new submission there."""
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne, cns_matricule=world.jean.matricule)
    await world.deliver_all()
    assert (await world.messages(cert.id))["cns"].status == "rejected"
    h = await token_for(world, dr_a)
    ok = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={
            "kind": "illness",
            "start": "2026-11-27",
            "end": "2026-11-29",
            "diagnosis": {"code": "J11.1", "label": "Grippe"},
        },
        headers=h,
    )
    assert ok.status == 201, await ok.text()
    new = await ok.json()
    await world.deliver_all()
    sent = await world.messages(new["id"])
    assert {t: m.status for t, m in sent.items()} == {"cns": "delivered", "dsp": "delivered"}
    cns_store = world.stored("cns")
    assert cert.id not in cns_store and cns_store[new["id"]].get("replaces") is None
    dsp_entry = next(
        m for m in world.stored("dsp").values() if m["entry_uuid"].endswith(new["id"][-12:])
    )
    assert dsp_entry["replaces_entry_uuid"] is not None  # the DSP had the first version


# ---------------------------------------------------------------- MHD through the outbox


async def test_mhd_transport_through_the_outbox(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    create_user: CreateUser,
) -> None:
    world = await make_world(
        aiohttp_client, aiohttp_server, make_app, tmp_path, dsp_transport="mhd"
    )
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    await world.deliver_all()
    msgs = await world.messages(cert.id)
    assert msgs["dsp"].status == "delivered"
    assert (msgs["dsp"].remote_reference or "").startswith("DocumentReference/")
    [stored] = world.stored("dsp").values()
    assert stored["transport"] == "ITI-65" and stored["patient_id"] == world.anne.matricule
    body = next((tmp_path / "store" / "dsp").glob("*/document.xml")).read_bytes()
    assert body == cert.content  # exactly the signed bytes

    h = await token_for(world, dr_a)
    ok = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={
            "kind": "illness",
            "start": "2026-11-27",
            "end": "2026-12-01",
            "diagnosis": {"code": "J11.1", "label": "Grippe"},
        },
        headers=h,
    )
    new = await ok.json()
    await world.deliver_all()
    assert (await world.messages(new["id"]))["dsp"].status == "delivered"
    by_unique = {m["unique_id"]: m for m in world.stored("dsp").values()}
    assert len(by_unique) == 2
    [replacement] = [m for m in by_unique.values() if m.get("replaces_unique_id")]
    assert by_unique[replacement["replaces_unique_id"]]["availability"] == "Deprecated"
    assert replacement["transport"] == "ITI-65"
