"""Publishing a signed RCP report through the workflow package: the mapping to the CDA builder,
and the refusal path (a report the CDA cannot carry stays VALIDATED, nothing is written)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from konsil import appkeys as K
from konsil.errors import ValidationError
from konsil.identity.matricule import make_matricule
from konsil.identity.models import Organisation
from rcp.domain.report import (
    ProposalItem,
    RcpReportData,
    ReportDiagnosis,
    ReportPatient,
    ReportPerson,
    ReportQuorum,
    ReportTnm,
)
from rcp.models import Case
from rcp.publishing import header, to_cda
from tests.conftest import Person
from tests.rcp.conftest import DECISION, GOOD_FICHE, World
from workflow.cda.rcp_report import build_rcp_report
from workflow.cda.validation import validate_cda
from workflow.cda.xsd import schema_available
from workflow.models import ClinicalDocument, OutboxMessage


def person(n: int, specialty: str | None) -> ReportPerson:
    return ReportPerson(f"acc{n}", f"pr{n}", f"Dr P{n}", specialty, None, f"Given{n}", f"Fam{n}")


CHAIR = person(1, "breast-surgery")
REPORT = RcpReportData(
    case_id="case1",
    patient=ReportPatient(
        "pat1", make_matricule("19700101", 123), "Marie", "Muller", date(1970, 1, 1), "U"
    ),
    board_id="b1",
    board_name="RCP Sein",
    tumour_domain="breast",
    host_organisation="CHL",
    session_id="s1",
    session_start=datetime(2026, 1, 20, 11, 30, tzinfo=UTC),
    question="Traitement adjuvant ?",
    diagnosis=ReportDiagnosis(
        "C50.4",
        "C50.4",
        "8500/3",
        "recurrence",
        "left",
        "Sein",
        "Quadrant supéro-externe",
        "Carcinome canalaire",
    ),
    tnm=ReportTnm("p", "T2", "N1a", "M0", "IIB", 7),
    ecog=1,
    history="Biopsie positive.",
    exams="",
    proposal=(ProposalItem("chemotherapy", "4 cycles"), ProposalItem("radiotherapy")),
    guideline_conform=False,
    deviation_justification="Comorbidités.",
    trial_proposed=True,
    trial_name="ADJUVANT-BC",
    conclusion="Chimiothérapie puis radiothérapie.",
    quorum=ReportQuorum(True, 3, ("breast-surgery", "medical-oncology", "radiation-oncology"), ()),
    participants=(
        CHAIR,
        person(2, "medical-oncology"),
        person(3, "radiation-oncology"),
        person(4, None),
    ),
    referring_physician=person(5, "general-practice"),
    case_status="VALIDATED",
    legal_authenticator=CHAIR,
    signed_at=datetime(2026, 1, 20, 13, 0, tzinfo=UTC),
    presentation="re-presentation",
    patient_informed=True,
    guideline="INCa 2024",
    trial_id="NCT05012345",
)


def test_mapping_to_the_cda_builder() -> None:
    r = to_cda(REPORT)
    assert (r.board, r.meeting, r.case_status) == (
        "RCP Sein",
        REPORT.session_start,
        "re-presentation",
    )
    d = r.diagnosis
    assert (d.icd10, d.label, d.topography, d.morphology, d.status) == (
        "C50.4",
        "Sein",
        "C50.4",
        "8500/3",
        "recurrence",
    )
    assert (r.tnm.t, r.tnm.n, r.tnm.m, r.tnm.stage, r.tnm.edition) == (
        "T2",
        "N1a",
        "M0",
        "IIB",
        "UICC 7e édition",
    )
    assert r.ecog == 1 and r.quorum_met and r.patient_informed
    assert [(i.kind, i.description) for i in r.proposal] == [
        ("chemotherapy", "4 cycles"),
        ("radiotherapy", "radiotherapy"),
    ]
    assert (r.guideline_conform, r.guideline, r.deviation_reason) == (
        False,
        "INCa 2024",
        "Comorbidités.",
    )
    assert (r.trial_proposed, r.trial_id, r.trial_name) == (True, "NCT05012345", "ADJUVANT-BC")
    # the participant without a specialty (a coordinator) is left out
    assert [p.id.extension for p in r.participants] == ["pr1", "pr2", "pr3"]
    org = Organisation(id="org1", name="CHL", kind="hospital")
    h = header(REPORT, "d" * 32, org)
    assert h.patient.sex == "UN" and h.legal_authenticator == h.author
    assert h.author.id.extension == "pr1" and h.organisation.name == "CHL"


@pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
def test_the_mapped_report_is_a_valid_cda() -> None:
    org = Organisation(id="org1", name="CHL", kind="hospital")
    xml = build_rcp_report(
        to_cda(REPORT), header(REPORT, "e" * 32, org), now=REPORT.signed_at or datetime.now(UTC)
    )
    assert validate_cda(xml) == []


def test_what_the_cda_cannot_carry_is_refused_with_every_reason() -> None:
    incomplete = replace(
        REPORT, tnm=None, ecog=None, participants=(person(4, None),), legal_authenticator=None
    )
    with pytest.raises(ValidationError) as err:
        to_cda(incomplete)
    assert set(err.value.fields) == {"tnm", "ecog", "participants", "legal_authenticator"}
    assert "TNM" in err.value.message and "ECOG" in err.value.message
    no_specialty = replace(REPORT, legal_authenticator=person(4, None))
    with pytest.raises(ValidationError) as err:
        to_cda(no_specialty)
    assert "legal_authenticator" in err.value.fields


async def test_a_case_the_report_could_not_carry_is_stopped_before_the_decision(
    world: World,
) -> None:
    """Submission asks for what the report CDA needs; a case submitted under older rules (no
    TNM) is refused at the decision, per field, and nothing is written."""
    w = world
    no_tnm = {"tnm_kind": "", "tnm_t": "", "tnm_n": "", "tnm_m": "", "stage_group": ""}
    p = await w.call(
        w.referrer,
        "POST",
        "/cases",
        {
            "board_id": w.board_id,
            "matricule": w.matricule,
            "submit": True,
            "fiche": {**GOOD_FICHE, **no_tnm, "tnm_edition": None},
        },
        400,
    )
    assert {"tnm_t", "tnm_n", "tnm_m", "tnm_kind", "tnm_edition"} <= set(p["errors"])
    case = await w.scheduled_case()
    cid = case["id"]
    async with w.client.app[K.DB].transaction() as s:
        row = await s.get(Case, cid)
        assert row is not None
        row.fiche = {**row.fiche, **no_tnm, "tnm_edition": None}
    await w.check_in(w.chair, w.medonc, w.radonc)
    p = await w.call(w.chair, "POST", f"/cases/{cid}/decision", DECISION, 400)
    assert {"fiche.tnm_t", "fiche.tnm_kind"} <= set(p["errors"])
    got = await w.call(w.referrer, "GET", f"/cases/{cid}")
    assert got["state"] == "SCHEDULED" and got["decision"] is None
    async with w.client.app[K.DB].session() as s:
        docs = await s.scalar(select(func.count()).select_from(ClinicalDocument))
        msgs = await s.scalar(select(func.count()).select_from(OutboxMessage))
    assert (docs, msgs) == (0, 0)


async def test_a_decision_needs_a_present_chair_and_only_a_participant_signs(
    world: World, create_user: Callable[..., Awaitable[Person]]
) -> None:
    w = world
    case = await w.scheduled_case()
    cid = case["id"]
    q = await w.check_in(w.medonc, w.radonc, w.radiologist)
    assert not q["met"]  # the chair is the board's only surgeon: add another, not a chair
    surgeon = await create_user("dr.surgeon2", specialty="surgery")
    await w.call(
        w.coordinator, "POST", f"/boards/{w.board_id}/members", {"username": surgeon.username}
    )
    await w.call(
        w.coordinator,
        "POST",
        f"/sessions/{w.session_id}/attendance",
        {"account_id": surgeon.account_id, "present": True},
    )
    p = await w.call(w.coordinator, "POST", f"/cases/{cid}/decision", DECISION, 400)
    assert set(p["errors"]) == {"chair"} and "participating chair" in p["detail"]
    await w.check_in(w.chair)
    await w.call(w.coordinator, "POST", f"/cases/{cid}/decision", DECISION)
