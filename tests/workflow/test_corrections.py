"""Corrections of the teleconsultation report and the prescription (the documents the video issuer
makes after a call), through the form and the JSON API: each new version is built by the same
builder from the values read back from the signed CDA, validates (XSD + LU profile), replaces the
old one (RPLC, old one amended) and reaches the DSP simulator with the replacement relation. What
is refused writes nothing but its audit event. The RCP report is corrected by its board.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from konsil import appkeys as K
from tests.conftest import AiohttpClient, Person, web_login
from tests.error_summary import read
from tests.workflow import helpers, samples
from tests.workflow.test_document_views import World, make_world, token_for
from tests.workflow.test_rcp_report import BREAST
from tests.workflow.test_withdrawal_delivery import drain
from workflow.cda import codes
from workflow.cda.prescription import Medication, Prescription, PrescriptionLine
from workflow.cda.rcp_report import build_rcp_report
from workflow.cda.reading import read_header, read_prescription, read_teleconsultation
from workflow.cda.sick_leave import Diagnosis
from workflow.cda.validation import validate_cda
from workflow.cda.xsd import schema_available
from workflow.corrections import prescription_fields, teleconsultation_fields
from workflow.models import ClinicalDocument, OutboxMessage
from workflow.simulators.common import scripted_faults

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
CreateUser = Callable[..., Awaitable[Person]]
INSTRUCTIONS = "Si douleur, 4 g par jour au plus"

ENOXAPARIN = PrescriptionLine(
    Medication("B01AB05", "Énoxaparine 4000 UI/0,4 mL, seringue"),
    dose=Decimal("0.4"),
    dose_unit="mL",
    route="20066000",
    times=1,
    per=1,
    period_unit="d",
    duration_days=10,
    quantity=Decimal(10),
    quantity_unit="1",
    reimbursable=True,
    instructions="Le soir, en alternant les côtés",
)


@pytest.fixture
async def outage_world(
    make_app: Callable[..., web.Application],
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> World:
    """The DSP answers its first request 503: the first document stays undelivered (pending,
    due after a backoff the fake clock reaches only when ``drain`` moves it)."""
    return await make_world(
        aiohttp_client, aiohttp_server, make_app, tmp_path, dsp_faults=scripted_faults(["503"])
    )


async def rows(world: World) -> tuple[int, int]:
    """How many documents and outbox messages exist: a refusal changes neither."""
    async with world.app[K.DB].session() as s:
        docs = (await s.execute(select(func.count()).select_from(ClinicalDocument))).scalar()
        msgs = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar()
    return int(docs or 0), int(msgs or 0)


async def replacement_delivered(world: World, old: ClinicalDocument, new_id: str) -> None:
    """The new version reached the DSP (XDS) replacing the old entry, which is deprecated."""
    await world.deliver_all()
    sent = await world.messages(new_id)
    assert {t: m.status for t, m in sent.items()} == {"dsp": "delivered"}
    store = world.stored("dsp")
    old_entry = next(m for m in store.values() if m["entry_uuid"].endswith(old.id[-12:]))
    new_entry = next(m for m in store.values() if m["entry_uuid"].endswith(new_id[-12:]))
    assert new_entry["replaces_entry_uuid"] == old_entry["entry_uuid"]
    assert old_entry["availability"] == "Deprecated"
    assert old_entry["replaced_by"] == new_entry["unique_id"]


async def replaces(world: World, old: ClinicalDocument, new_id: str) -> ClinicalDocument:
    """The new version: valid, signed, the next of the set, RPLC to the old one (now amended)."""
    new = await world.document(new_id)
    assert validate_cda(new.content) == []
    assert (new.status, new.version, new.replaces_id, new.set_id) == (
        "final",
        2,
        old.id,
        old.set_id,
    )
    assert new.signature is not None
    assert (await world.document(old.id)).status == "amended"
    old_header, header = read_header(old.content).header, read_header(new.content).header
    assert header.replaces is not None
    assert header.replaces.parent_id == old_header.document_id
    assert header.replaces.parent_version == 1 and header.set_id == old_header.set_id
    assert header.patient == old_header.patient and header.author == old_header.author
    assert set(await world.messages(new.id)) == {"dsp"}  # queued with it, where the old one went
    return new


async def refusals(world: World, doc: ClinicalDocument) -> list[tuple[str, dict[str, Any]]]:
    """The refused corrections of ``doc`` in the audit trail: (outcome, details)."""
    events = await world.audit("document.replace", f"document/{doc.id}")
    return [(e.outcome, json.loads(e.details)) for e in events]


# ---------------------------------------------------------------- the teleconsultation report


async def test_report_corrected_through_the_form(
    outage_world: World, create_user: CreateUser
) -> None:
    world = outage_world
    dr_a = await create_user("dra")
    report = await world.issue(dr_a, world.anne, kind="teleconsultation-report")
    csrf = await web_login(world.client, dr_a)
    page = await (await world.client.get(f"/documents/{report.id}")).text()
    assert 'id="correct"' in page and "Corriger ce compte rendu" in page

    form = await (await world.client.get(f"/documents/{report.id}/correct")).text()
    assert "Correction d&#39;un compte rendu de téléconsultation" in form
    assert ">Question sur un résultat de prise de sang.</textarea>" in form
    assert 'id="call"' in form and "Téléphone" in form  # the call: shown, not a field
    assert 'name="modality"' not in form and 'name="start"' not in form
    assert 'name="diagnoses.0.code"' in form  # a row to add a diagnosis
    opened = await world.audit("document.read", f"document/{report.id}")
    assert [json.loads(e.details) for e in opened] == [{}, {"view": "correction"}]

    fields = {
        "csrf_token": csrf,
        "reason": "Question sur un résultat de prise de sang (ferritine).",
        "present_illness": "",
        "findings": "Hémoglobine 13,2 g/dL, normale.\r\nFerritine 18 µg/L, basse.",
        "plan": "Fer oral trois mois, contrôle ensuite.",
        "diagnoses.0.code": "",  # a blank row is no diagnosis
        "diagnoses.0.label": "",
        "diagnoses.1.code": "D50.9",
        "diagnoses.1.label": "Anémie par carence en fer",
        "follow_up": "2027-02-26",
    }
    path = f"/documents/{report.id}/correct"
    busy = await world.client.post(path, data=fields)
    assert busy.status == 409 and "still being delivered" in await busy.text()
    await drain(world)
    before = await rows(world)

    wrong = await world.client.post(
        path, data={**fields, "diagnoses.1.code": "anémie", "plan": "  "}
    )
    text = await wrong.text()
    assert wrong.status == 400
    # the builder's own checks, on the form's fields (its diagnoses.0 is the form's row 1)
    assert 'id="e-diagnoses.1.code"' in text
    assert "&#39;anémie&#39; n&#39;est pas un code CIM-10" in text  # French first
    assert 'id="e-plan"' in text and 'value="anémie"' in text
    assert await rows(world) == before and (await world.document(report.id)).status == "final"

    resp = await world.client.post(path, data=fields, allow_redirects=False)
    assert resp.status == 303
    new = await replaces(world, report, resp.headers["Location"].split("/")[2].split("?")[0])
    signed = read_teleconsultation(report.content)
    assert read_teleconsultation(new.content) == replace(
        signed,  # the call (times, modality, consent) as signed
        reason="Question sur un résultat de prise de sang (ferritine).",
        findings="Hémoglobine 13,2 g/dL, normale.\nFerritine 18 µg/L, basse.",
        plan="Fer oral trois mois, contrôle ensuite.",
        diagnoses=(Diagnosis("D50.9", "Anémie par carence en fer"),),
        follow_up=date(2027, 2, 26),
    )
    await replacement_delivered(world, report, new.id)
    page = await (await world.client.get(f"/documents/{new.id}")).text()
    assert "v1 · amended" in page and "Ferritine 18" in page
    assert [(o, d["refused"], d["step"]) for o, d in await refusals(world, report)] == [
        ("failure", "Conflict", "submit"),
        ("failure", "ValidationError", "submit"),
    ]
    assert len(await world.audit("document.replace", f"document/{new.id}")) == 1


async def test_report_corrected_through_the_api(world: World, create_user: CreateUser) -> None:
    dr_a = await create_user("dra")
    report = await world.issue(dr_a, world.jean, kind="teleconsultation-report")
    await world.deliver_all()
    h = await token_for(world, dr_a)
    path = f"/api/v1/documents/{report.id}/corrections"
    body: dict[str, Any] = {
        "reason": "Question sur un résultat de prise de sang.",
        "present_illness": "Fatigue depuis un mois.",
        "findings": "Hémoglobine 13,2 g/dL, normale.",
        "plan": "Pas de mesure.",
        "diagnoses": [{"code": "R53", "label": "Malaise et fatigue"}],
    }
    before = await rows(world)
    for changed, errors in (
        ({"modality": "video"}, {"modality": "is recorded from the call and cannot be corrected"}),
        ({"diagnosis": {"code": "R53"}}, {"diagnosis.code": "is not a field of this document"}),
        ({"findings": ""}, {"findings": "is required"}),
        ({"follow_up": "2026-11-01"}, {"follow_up": "is in the past"}),
    ):
        bad = await world.client.post(path, json={**body, **changed}, headers=h)
        assert bad.status == 400 and (await bad.json())["errors"] == errors, changed
    assert await rows(world) == before

    ok = await world.client.post(path, json=body, headers=h)
    assert ok.status == 201, await ok.text()
    summary = await ok.json()
    assert (summary["version"], summary["replaces_id"]) == (2, report.id)
    assert [(d["target"], d["replaces"]) for d in summary["deliveries"]] == [("dsp", True)]
    new = await replaces(world, report, summary["id"])
    value = read_teleconsultation(new.content)
    assert value.present_illness == "Fatigue depuis un mois."
    assert value.diagnoses == (Diagnosis("R53", "Malaise et fatigue"),)
    assert value.start == helpers.CONSULT.start and value.modality == "phone"
    await replacement_delivered(world, report, new.id)


# ---------------------------------------------------------------- the prescription


async def test_prescription_corrected_through_the_api(
    outage_world: World, create_user: CreateUser
) -> None:
    world = outage_world
    dr_a = await create_user("dra")
    rx = await world.issue(dr_a, world.jean, kind="prescription")
    h = await token_for(world, dr_a)
    path = f"/api/v1/documents/{rx.id}/corrections"
    paracetamol = {
        "medication": {"atc": "N02BE01", "name": "Paracétamol 1 g, comprimé"},
        "dose": 1,
        "dose_unit": "{tbl}",
        "route": "20053000",
        "times": 4,
        "per": 1,
        "period_unit": "d",
        "duration_days": 5,
        "quantity": 20,
        "quantity_unit": "{tbl}",
        "reimbursable": True,
        "instructions": INSTRUCTIONS,
    }
    enoxaparin = {  # the amoxicillin line is left out: the corrected prescription drops it
        "medication": {"atc": "B01AB05", "name": "Énoxaparine 4000 UI/0,4 mL, seringue"},
        "dose": "0.4",
        "dose_unit": "mL",
        "route": "20066000",
        "times": 1,
        "period_unit": "d",  # per: 1 when left out
        "duration_days": 10,
        "quantity": 10,
        "quantity_unit": "1",
        "reimbursable": True,
        "instructions": "Le soir, en alternant les côtés",
    }
    body: dict[str, Any] = {
        "start": "2026-11-28",
        "note": "Ne pas dépasser 4 g de paracétamol par jour.",
        "lines": [paracetamol, enoxaparin],
    }
    busy = await world.client.post(path, json=body, headers=h)
    assert busy.status == 409 and (await busy.json())["errors"] == {"delivery": "DSP"}
    await drain(world)
    before = await rows(world)

    malformed = await world.client.post(
        path, json={**body, "lines": [{**paracetamol, "dose": "beaucoup"}, enoxaparin]}, headers=h
    )
    assert malformed.status == 400
    assert (await malformed.json())["errors"] == {"lines.0.dose": "expected a number"}
    refused = await world.client.post(
        path,
        json={**body, "start": "2026-11-20", "lines": [paracetamol, {**enoxaparin, "route": "sc"}]},
        headers=h,
    )
    problem = await refused.json()
    assert refused.status == 400 and problem["errors"] == {
        "start": "a prescription cannot start in the past",
        "lines.1.route": problem["errors"]["lines.1.route"],
    }
    assert problem["errors"]["lines.1.route"].startswith("unknown code 'sc'")
    empty = await world.client.post(path, json={**body, "lines": []}, headers=h)
    assert (await empty.json())["errors"] == {"lines": "a prescription has at least one medication"}
    assert await rows(world) == before and (await world.document(rx.id)).status == "final"

    ok = await world.client.post(path, json=body, headers=h)
    assert ok.status == 201, await ok.text()
    new = await replaces(world, rx, (await ok.json())["id"])
    first = helpers.RX.lines[0]
    assert read_prescription(new.content) == Prescription(
        (
            replace(first, times=4, quantity=Decimal(20), instructions=INSTRUCTIONS),
            ENOXAPARIN,
        ),
        start=date(2026, 11, 28),
        note="Ne pas dépasser 4 g de paracétamol par jour.",
    )
    await replacement_delivered(world, rx, new.id)
    assert [(o, d["refused"]) for o, d in await refusals(world, rx)] == [
        ("failure", "Conflict"),
        ("failure", "ValidationError"),
        ("failure", "ValidationError"),
        ("failure", "ValidationError"),
    ]


async def test_prescription_corrected_through_the_form(
    world: World, create_user: CreateUser
) -> None:
    dr_a = await create_user("dra")
    rx = await world.issue(dr_a, world.anne, kind="prescription")
    await world.deliver_all()
    csrf = await web_login(world.client, dr_a)
    page = await (await world.client.get(f"/documents/{rx.id}")).text()
    assert 'id="correct"' in page and "Corriger cette prescription" in page
    form = await (await world.client.get(f"/documents/{rx.id}/correct")).text()
    assert 'value="Paracétamol 1 g, comprimé"' in form and 'value="2026-11-27"' in form
    assert 'id="line-2"' in form and 'id="line-3"' not in form  # two lines and a blank one
    assert 'name="lines.1.remove"' in form and 'name="lines.2.remove"' not in form
    assert '<option value="{caps}" selected>' in form

    # what the form posts: the signed values, the first line removed, a new one in the blank row
    fields: dict[str, str] = {"csrf_token": csrf, **prescription_fields(helpers.RX)}
    fields["lines.0.remove"] = "1"
    p = "lines.2."
    fields.update(
        {
            p + "medication.atc": "B01AB5",
            p + "medication.name": ENOXAPARIN.medication.name,
            p + "dose": "0,4",  # a decimal comma is a decimal point
            p + "dose_unit": "mL",
            p + "route": "20066000",
            p + "times": "1",
            p + "per": "",
            p + "period_unit": "d",
            p + "duration_days": "10",
            p + "quantity": "10",
            p + "quantity_unit": "1",
            p + "reimbursable": "1",
            p + "instructions": "Le soir, en alternant les côtés",
        }
    )
    before = await rows(world)
    path = f"/documents/{rx.id}/correct"
    wrong = await world.client.post(path, data=fields)
    text = await wrong.text()
    assert wrong.status == 400
    # the builder's lines.1 is the form's row 2 (row 0 was removed)
    assert 'id="e-lines.2.medication.atc"' in text
    assert "&#39;B01AB5&#39; n&#39;est pas un code ATC" in text  # French first
    assert 'name="lines.0.remove" value="1" checked' in text  # the submitted form, as it was
    world.client.session.cookie_jar.update_cookies({"konsil_lang": "en"})
    text = await (await world.client.post(path, data=fields)).text()
    alert = read(text)  # the English page leaves the key list out; the summary names the field
    assert alert.message == "the prescription is not valid"
    assert alert.link_texts["lines.2.medication.atc"] == (
        "ATC code: 'B01AB5' is not an ATC code (e.g. J01CA04)"
    )
    assert await rows(world) == before

    fields[p + "medication.atc"] = "B01AB05"
    resp = await world.client.post(path, data=fields, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    new = await replaces(world, rx, resp.headers["Location"].split("/")[2].split("?")[0])
    assert read_prescription(new.content) == replace(
        helpers.RX, lines=(helpers.RX.lines[1], ENOXAPARIN)
    )
    await replacement_delivered(world, rx, new.id)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", ["teleconsultation-report", "prescription"])
async def test_refused_corrections_write_nothing(
    world: World, create_user: CreateUser, kind: str
) -> None:
    dr_a, dr_b, dr_c = await create_user("dra"), await create_user("drb"), await create_user("drc")
    doc = await world.issue(dr_a, world.anne, kind=kind)
    await world.issue(dr_b, world.anne, kind=kind)  # dr_b cares for Anne too: may read doc
    mistake = await world.issue(dr_a, world.anne, kind=kind)
    type_code = codes.BY_KIND[kind].code
    odd = await world.issue(  # not a CDA the reader knows (the DSP refuses it too)
        dr_a,
        world.anne,
        kind=kind,
        build=lambda m, i: helpers.minimal_cda(m, i, type_code=type_code),
    )
    await world.deliver_all()
    ha, hb, hc = [await token_for(world, p) for p in (dr_a, dr_b, dr_c)]
    signed = (
        teleconsultation_fields(read_teleconsultation(doc.content))
        if kind == "teleconsultation-report"
        else prescription_fields(read_prescription(doc.content))
    )
    path = f"/api/v1/documents/{doc.id}/corrections"

    before = await rows(world)
    assert (await world.client.post(path, json=signed, headers=hb)).status == 403  # not the author
    assert (await world.client.post(path, json=signed, headers=hc)).status == 404  # can't see it
    assert (await world.client.get(f"/api/v1/documents/{doc.id}", headers=hb)).status == 200
    withdrawn = await world.client.post(
        f"/api/v1/documents/{mistake.id}/entered-in-error", headers=ha
    )
    assert (await withdrawn.json())["status"] == "entered-in-error"
    after_withdrawal = await rows(world)
    gone = await world.client.post(
        f"/api/v1/documents/{mistake.id}/corrections", json=signed, headers=ha
    )
    assert gone.status == 409 and (await gone.json())["errors"] == {"status": "entered-in-error"}
    unreadable = await world.client.post(
        f"/api/v1/documents/{odd.id}/corrections", json=signed, headers=ha
    )
    assert unreadable.status == 409 and "cannot be read back" in (await unreadable.json())["detail"]
    assert before[0] == after_withdrawal[0] and await rows(world) == after_withdrawal
    assert [(o, d["refused"]) for o, d in await refusals(world, doc)] == [
        ("denied", "Forbidden"),
        ("denied", "NotFound"),
    ]

    # corrected once (the values as signed, a new version all the same), never twice
    assert (await world.client.post(path, json=signed, headers=ha)).status == 201
    corrected = await rows(world)
    again = await world.client.post(path, json=signed, headers=ha)
    assert again.status == 409 and (await again.json())["errors"] == {"status": "amended"}
    assert await rows(world) == corrected

    # the form: the author's only
    await web_login(world.client, dr_b)
    assert (await world.client.get(f"/documents/{doc.id}/correct")).status == 403
    assert (await refusals(world, doc))[-1][0] == "denied"


# ---------------------------------------------------------------- the RCP report


async def test_the_rcp_report_is_corrected_by_its_board(
    world: World, create_user: CreateUser
) -> None:
    dr_a = await create_user("dra")

    def rcp_cda(matricule: str, document_id: str) -> bytes:
        h = replace(
            helpers._header(matricule, document_id),
            author=samples.ONCOLOGIST,  # a board member, as RCP publishing signs it
            organisation=samples.HOSPITAL,
            confidentiality="R",
        )
        return build_rcp_report(BREAST, h, now=samples.NOW)

    report = await world.issue(dr_a, world.anne, kind="rcp-report", build=rcp_cda)
    await world.deliver_all()
    await web_login(world.client, dr_a)
    page = await (await world.client.get(f"/documents/{report.id}")).text()
    assert 'id="correct-by-board"' in page and 'id="correct"' not in page
    assert "présentez à nouveau le dossier à la RCP" in page  # French first
    world.client.session.cookie_jar.update_cookies({"konsil_lang": "en"})
    page = await (await world.client.get(f"/documents/{report.id}")).text()
    assert "mark it as entered in error and submit the case to the board again" in page
    assert "Mark as entered in error" in page  # that stays the author's

    refused = await world.client.get(f"/documents/{report.id}/correct")
    assert refused.status == 409 and "the board again" in await refused.text()
    h = await token_for(world, dr_a)
    api = await world.client.post(f"/api/v1/documents/{report.id}/corrections", json={}, headers=h)
    assert api.status == 409 and (await api.json())["errors"] == {"kind": "rcp-report"}
    assert (await world.document(report.id)).status == "final"
    assert [o for o, _ in await refusals(world, report)] == ["failure", "failure"]
