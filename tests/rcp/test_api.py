"""The RCP service through its JSON API, on both databases: lifecycle, quorum gate, signature and
publication as a signed CDA queued for the DSP, authorisation, audit, calendars, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import icalendar
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.errors import Unavailable
from rcp.domain.report import RcpReportData
from rcp.web.keys import RCP
from tests.rcp.conftest import DECISION, World
from workflow.models import ClinicalDocument, OutboxMessage


async def test_full_lifecycle_to_the_dsp_outbox(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    assert case["state"] == "SCHEDULED" and case["xdw"]["task_status"] == "READY"
    cid = case["id"]
    # No quorum yet: the decision is refused, nothing changes
    problem = await w.call(w.chair, "POST", f"/cases/{cid}/decision", DECISION, 409)
    assert "quorum" in problem["detail"] and "radiation-oncology" in problem["errors"]["quorum"]
    q = await w.check_in(w.chair, w.medonc)
    assert not q["met"] and q["missing_required"] == ["radiation-oncology"]
    q = await w.check_in(w.radonc)
    assert q["met"]
    decided = await w.call(w.chair, "POST", f"/cases/{cid}/decision", DECISION)
    assert decided["state"] == "DISCUSSED"
    assert {p["specialty"] for p in decided["decision"]["participants"]} == {
        "breast-surgery",
        "medical-oncology",
        "radiation-oncology",
    }
    report = await w.call(w.coordinator, "POST", f"/cases/{cid}/report", None, 201)
    assert report["legal_authenticator"] is None
    # Only a chair signs, and only with the right password
    await w.call(
        w.medonc, "POST", f"/cases/{cid}/sign", {"password": w.medonc.person.password}, 403
    )
    await w.call(w.chair, "POST", f"/cases/{cid}/sign", {"password": "wrong"}, 403)
    signed = await w.call(
        w.chair, "POST", f"/cases/{cid}/sign", {"password": w.chair.person.password}
    )
    assert signed["state"] == "PUBLISHED" and signed["xdw"]["workflow_status"] == "CLOSED"
    assert signed["publication_ref"].startswith("document/")
    assert signed["publication"]["delivery_status"] == "pending"
    doc_id = signed["publication"]["document_id"]
    async with w.client.app[K.DB].session() as s:
        doc = await s.get(ClinicalDocument, doc_id)
        msgs = (await s.execute(select(OutboxMessage))).scalars().all()
    assert doc is not None and doc.status == "final" and doc.kind == "rcp-report"
    assert doc.signature and doc.patient_id == w.patient_id
    assert [(m.target, m.document_id, m.status) for m in msgs] == [("dsp", doc_id, "pending")]
    data = RcpReportData.from_json(signed["report"])
    assert data.legal_authenticator is not None
    assert data.legal_authenticator.account_id == w.chair.id
    assert data.legal_authenticator.specialty == "breast-surgery"
    assert (
        data.diagnosis.icd10 == "C50.4" and data.tnm is not None and data.tnm.stage_group == "IIB"
    )
    assert data.ecog == 1 and data.quorum.met and len(data.participants) == 3
    assert data.patient.matricule == w.matricule and data.case_status == "VALIDATED"
    assert [i.kind for i in data.proposal] == ["chemotherapy", "radiotherapy"]
    assert data.presentation == "first-presentation" and data.patient_informed
    assert data.diagnosis.label.startswith("Carcinome") and data.diagnosis.morphology_label
    assert (data.trial_id, data.guideline) == ("NCT05012345", "INCa 2024 — cancer du sein")
    assert data.legal_authenticator.family_name == "Surgeon"
    assert all(p.given_name and p.family_name for p in data.participants)
    assert RcpReportData.from_json(data.to_json()) == data
    # The referring physician (a DPI with their token) fetches the outcome
    outcome = await w.call(w.referrer, "GET", f"/cases/{cid}/outcome")
    assert (
        outcome["state"] == "PUBLISHED"
        and outcome["report"]["conclusion"] == DECISION["conclusion"]
    )
    mine = await w.call(w.referrer, "GET", "/cases")
    assert [c["id"] for c in mine["cases"]] == [cid]


async def test_every_transition_is_audited_with_the_patient(world: World) -> None:
    w = world
    case = await w.new_case()
    await w.call(
        w.coordinator,
        "POST",
        f"/cases/{case['id']}/transitions",
        {"action": "request_info", "note": "Missing pathology report"},
    )
    async with w.client.app[K.DB].session() as s:
        events = (
            (
                await s.execute(
                    select(AuditEvent)
                    .where(AuditEvent.resource == f"rcp/case/{case['id']}")
                    .order_by(AuditEvent.seq)
                )
            )
            .scalars()
            .all()
        )
    actions = [e.action for e in events]
    assert actions[:3] == ["rcp.case.create", "rcp.case.submit", "rcp.case.read"]
    assert "rcp.case.request_info" in actions
    assert all(e.patient_id == w.patient_id for e in events)


async def test_illegal_transitions_are_refused_and_change_nothing(world: World) -> None:
    w = world
    case = await w.new_case(submit=False)
    cid = case["id"]
    p = await w.call(
        w.coordinator,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        409,
    )
    assert "DRAFT" in p["detail"]
    await w.call(w.referrer, "POST", f"/cases/{cid}/transitions", {"action": "submit"})
    # reject needs a reason; nothing is half-applied
    p = await w.call(w.coordinator, "POST", f"/cases/{cid}/transitions", {"action": "reject"}, 400)
    assert "note" in p["errors"]
    after = await w.call(w.referrer, "GET", f"/cases/{cid}")
    assert after["state"] == "SUBMITTED" and after["version"] == case["version"] + 1
    # the patient must be informed before scheduling
    await w.call(
        w.coordinator,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "request_info", "note": "inform"},
    )
    fiche = {**after["fiche"], "patient_informed": False}
    await w.call(w.referrer, "PUT", f"/cases/{cid}", {"fiche": fiche, "submit": True})
    p = await w.call(
        w.coordinator,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        400,
    )
    assert "patient_informed" in p["errors"]
    # a stale version is a conflict
    now = await w.call(w.referrer, "GET", f"/cases/{cid}")
    await w.call(
        w.coordinator,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "postpone", "version": now["version"] - 1},
        409,
    )
    await w.call(w.referrer, "POST", f"/cases/{cid}/transitions", {"action": "cancel"})
    p = await w.call(w.referrer, "POST", f"/cases/{cid}/transitions", {"action": "cancel"}, 409)
    assert "CANCELLED" in p["detail"]


async def test_validation_errors_come_back_per_field(world: World) -> None:
    w = world
    p = await w.call(
        w.referrer,
        "POST",
        "/cases",
        {
            "board_id": w.board_id,
            "matricule": w.matricule,
            "submit": True,
            "fiche": {
                "icd10": "X12",
                "ecog": 7,
                "tnm_m": "M1",
                "stage_group": "II",
                "tnm_kind": "c",
                "tnm_t": "T1",
                "tnm_n": "N0",
                "tnm_edition": 8,
            },
        },
        400,
    )
    assert {"icd10", "ecog", "stage_group", "question", "origin", "history"} <= set(p["errors"])
    assert p["errors"]["history"].startswith("required to submit the case")
    assert "tnm_t" not in p["errors"]  # given
    # a draft is saved with the same fiche minus the format errors
    draft = await w.call(
        w.referrer,
        "POST",
        "/cases",
        {"board_id": w.board_id, "matricule": w.matricule, "fiche": {"tnm_t": "T1"}},
        400,
    )
    assert set(draft["errors"]) == {"tnm_n", "tnm_m", "tnm_kind", "tnm_edition"}  # TNM consistency
    await w.call(
        w.referrer,
        "POST",
        "/cases",
        {"board_id": w.board_id, "matricule": w.matricule, "fiche": {"question": "?"}},
        201,
    )
    p = await w.call(
        w.referrer,
        "POST",
        "/cases",
        {"board_id": w.board_id, "matricule": "1970010112345", "fiche": {}},
        400,
    )
    assert set(p["errors"]) == {"matricule"} or set(p["errors"]) == {"patient"}


async def test_authorisation(world: World) -> None:
    w = world
    case = await w.new_case()
    cid = case["id"]
    # an outsider (not a member, not the referrer) sees nothing, and the refusal is audited
    await w.call(w.outsider, "GET", f"/cases/{cid}", None, 403)
    await w.call(w.outsider, "GET", f"/cases/{cid}/outcome", None, 403)
    async with w.client.app[K.DB].session() as s:
        denied = (
            (
                await s.execute(
                    select(AuditEvent).where(
                        AuditEvent.outcome == "denied", AuditEvent.actor == w.outsider.id
                    )
                )
            )
            .scalars()
            .all()
        )
    assert denied and denied[0].patient_id == w.patient_id
    # members and the referrer see it
    await w.call(w.radiologist, "GET", f"/cases/{cid}")
    await w.call(w.referrer, "GET", f"/cases/{cid}")
    # a plain member cannot triage; the referrer cannot schedule their own case
    await w.call(
        w.radiologist,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        403,
    )
    await w.call(
        w.referrer,
        "POST",
        f"/cases/{cid}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        403,
    )
    # only coordinators manage the board; a practitioner cannot create one
    await w.call(w.medonc, "POST", f"/boards/{w.board_id}/members", {"username": "dr.other"}, 403)
    await w.call(w.medonc, "POST", "/boards", {"name": "X", "tumour_domain": "skin"}, 403)
    # outsiders see no session agenda or quorum
    await w.call(w.outsider, "GET", f"/sessions/{w.session_id}", None, 403)
    await w.call(w.outsider, "GET", f"/sessions/{w.session_id}/quorum", None, 403)
    # members check only themselves in
    await w.call(
        w.medonc, "POST", f"/sessions/{w.session_id}/attendance", {"account_id": w.radonc.id}, 403
    )
    q = await w.call(w.medonc, "POST", f"/sessions/{w.session_id}/attendance", {})
    assert q["physicians_present"] == 1


async def test_concurrent_decisions_one_wins(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    await w.check_in(w.chair, w.medonc, w.radonc)
    body = {**DECISION, "version": case["version"]}
    path = f"/api/v1/rcp/cases/{case['id']}/decision"
    r1, r2 = await asyncio.gather(
        w.client.post(path, json=body, headers=w.chair.headers),
        w.client.post(path, json={**body, "conclusion": "other"}, headers=w.coordinator.headers),
    )
    assert sorted([r1.status, r2.status]) == [200, 409]
    loser = r1 if r1.status == 409 else r2
    assert (await loser.json())["title"] == "Conflict"
    final = await w.call(w.referrer, "GET", f"/cases/{case['id']}")
    assert final["state"] == "DISCUSSED" and final["version"] == case["version"] + 1
    winner_body = body if r1.status == 200 else {**body, "conclusion": "other"}
    assert final["decision"]["conclusion"] == winner_body["conclusion"]


async def test_session_cancellation_postpones_cases_and_calendars_show_it(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    feed = await w.client.get(
        f"/api/v1/rcp/boards/{w.board_id}/calendar.ics", headers=w.medonc.headers
    )
    assert feed.status == 200 and feed.content_type == "text/calendar"
    ev = icalendar.Calendar.from_ical(await feed.read()).walk("VEVENT")[0]
    assert ev.decoded("dtstart") == datetime(2026, 1, 20, 11, 30, tzinfo=UTC)
    assert str(ev["status"]) == "CONFIRMED" and str(ev["location"]) == "Salle RCP"
    result = await w.call(w.coordinator, "POST", f"/sessions/{w.session_id}/cancel")
    assert result["postponed_cases"] == [case["id"]]
    after = await w.call(w.referrer, "GET", f"/cases/{case['id']}")
    assert after["state"] == "POSTPONED" and after["session_id"] is None
    inv = await w.client.get(
        f"/api/v1/rcp/sessions/{w.session_id}/invite.ics", headers=w.chair.headers
    )
    cal = icalendar.Calendar.from_ical(await inv.read())
    assert str(cal["method"]) == "CANCEL"
    iev = cal.walk("VEVENT")[0]
    assert str(iev["status"]) == "CANCELLED" and iev.decoded("sequence") == 1
    mine = await w.client.get("/api/v1/rcp/calendar.ics", headers=w.radonc.headers)
    assert [
        str(e["status"]) for e in icalendar.Calendar.from_ical(await mine.read()).walk("VEVENT")
    ] == ["CANCELLED"]
    # an outsider gets no board feed; a cancelled session takes no more cases
    r = await w.client.get(
        f"/api/v1/rcp/boards/{w.board_id}/calendar.ics", headers=w.outsider.headers
    )
    assert r.status == 403
    p = await w.call(
        w.coordinator,
        "POST",
        f"/cases/{case['id']}/transitions",
        {"action": "schedule", "session_id": w.session_id},
        400,
    )
    assert p["errors"]["session_id"] == "the session is cancelled"


async def test_weekly_schedule_generates_sessions(world: World) -> None:
    w = world
    out = await w.call(
        w.coordinator,
        "POST",
        f"/boards/{w.board_id}/schedules",
        {
            "weekday": 1,
            "start": "12:30",
            "duration_minutes": 90,
            "capacity": 12,
            "place": "Salle 1",
            "weeks": 4,
        },
        201,
    )
    # Tuesday 20 January 12:30 already exists as a one-off session: three new ones
    starts = [s["starts_at"] for s in out["sessions"]]
    assert starts == [
        "2026-01-27T11:30:00+00:00",
        "2026-02-03T11:30:00+00:00",
        "2026-02-10T11:30:00+00:00",
    ]
    p = await w.call(
        w.coordinator, "POST", f"/boards/{w.board_id}/schedules", {"weekday": 9, "start": "x"}, 400
    )
    assert {"weekday", "start"} <= set(p["errors"])


async def test_attachments_limits(world: World) -> None:
    w = world
    case = await w.new_case()
    url = f"/api/v1/rcp/cases/{case['id']}/attachments?filename=cr.pdf"
    ok = await w.client.post(
        url,
        data=b"%PDF-1.7 test",
        headers={**w.referrer.headers, "Content-Type": "application/pdf"},
    )
    assert ok.status == 201
    bad = await w.client.post(
        url, data=b"MZ\x90\x00", headers={**w.referrer.headers, "Content-Type": "application/pdf"}
    )
    assert bad.status == 400
    exe = await w.client.post(
        url, data=b"MZ", headers={**w.referrer.headers, "Content-Type": "application/x-msdownload"}
    )
    assert exe.status == 400
    got = await w.call(w.medonc, "GET", f"/cases/{case['id']}")
    assert [a["filename"] for a in got["attachments"]] == ["cr.pdf"]


async def test_openapi_lists_the_rcp_api(world: World) -> None:
    resp = await world.client.get("/api/v1/openapi.json")
    doc = await resp.json()
    assert "post" in doc["paths"]["/api/v1/rcp/cases"]
    assert "get" in doc["paths"]["/api/v1/rcp/cases/{id}/outcome"]
    assert "RcpFiche" in doc["components"]["schemas"]


class RefusingPublisher:
    """A ReportPublisher whose DSP refuses: publication must leave the case VALIDATED."""

    async def publish(self, session: Any, report: RcpReportData) -> str:
        raise Unavailable("the DSP is not reachable")


async def test_a_failed_publication_leaves_the_case_validated_and_can_be_retried(
    world: World,
) -> None:
    w = world
    case = await w.scheduled_case()
    cid = case["id"]
    await w.check_in(w.chair, w.medonc, w.radonc)
    await w.call(w.chair, "POST", f"/cases/{cid}/decision", DECISION)
    await w.call(w.chair, "POST", f"/cases/{cid}/report", None, 201)
    service = w.client.app[RCP]
    queue, service.publisher = service.publisher, RefusingPublisher()
    p = await w.call(
        w.chair, "POST", f"/cases/{cid}/sign", {"password": w.chair.person.password}, 503
    )
    assert "DSP" in p["detail"]
    got = await w.call(w.referrer, "GET", f"/cases/{cid}")
    assert got["state"] == "VALIDATED" and got["publication_ref"] is None
    assert got["report"]["legal_authenticator"]["account_id"] == w.chair.id
    service.publisher = queue
    await w.call(w.radiologist, "POST", f"/cases/{cid}/publish", None, 403)
    done = await w.call(w.coordinator, "POST", f"/cases/{cid}/publish")
    assert done["state"] == "PUBLISHED" and done["publication_ref"].startswith("document/")
    await w.call(w.coordinator, "POST", f"/cases/{cid}/publish", None, 409)


async def test_board_case_list_for_triage(world: World) -> None:
    w = world
    a = await w.new_case()
    await w.new_case(submit=False)
    listed = await w.call(w.coordinator, "GET", f"/boards/{w.board_id}/cases?state=SUBMITTED")
    assert [c["id"] for c in listed["cases"]] == [a["id"]]
    await w.call(w.outsider, "GET", f"/boards/{w.board_id}/cases", None, 403)
    await w.call(w.coordinator, "GET", f"/boards/{w.board_id}/cases?state=NOPE", None, 400)


async def test_concurrent_check_ins_of_one_member(world: World) -> None:
    w = world
    path = f"/api/v1/rcp/sessions/{w.session_id}/attendance"
    body = {"account_id": w.medonc.id, "present": True}
    r1, r2 = await asyncio.gather(
        w.client.post(path, json=body, headers=w.coordinator.headers),
        w.client.post(path, json=body, headers=w.chair.headers),
    )
    assert (r1.status, r2.status) == (200, 200)
    q = await w.call(w.medonc, "GET", f"/sessions/{w.session_id}/quorum")
    assert q["physicians_present"] == 1
