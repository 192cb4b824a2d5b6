from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from lxml import etree

from konsil.errors import ValidationError
from workflow.cda.rcp_report import (
    CancerDiagnosis,
    ProposalItem,
    RcpReport,
    Tnm,
    build_rcp_report,
    quorum_reached,
)
from workflow.cda.validation import document_kind, validate_cda
from workflow.cda.values import Header, Patient
from workflow.cda.xsd import parse, schema_available

from .samples import (
    ANNE,
    GP,
    HOSPITAL,
    JEAN,
    NOW,
    ONCOLOGIST,
    PATHOLOGIST,
    RADIOTHERAPIST,
    SURGEON,
    header,
)

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
NS = {"h": "urn:hl7-org:v3"}
MEETING = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
BOARD = (SURGEON, ONCOLOGIST, RADIOTHERAPIST, PATHOLOGIST)

BREAST = RcpReport(
    board="RCP sénologie",
    meeting=MEETING,
    case_status="first-presentation",
    question="Quelle prise en charge après tumorectomie pour carcinome canalaire infiltrant ?",
    history="Patiente de 43 ans, mammographie de dépistage ACR 5, biopsie le 02/10/2026.",
    diagnosis=CancerDiagnosis(
        icd10="C50.4",
        label="Tumeur maligne du quadrant supéro-externe du sein",
        topography="C50.4",
        topography_label="Quadrant supéro-externe du sein",
        morphology="8500/3",
        morphology_label="Carcinome canalaire infiltrant",
        status="primary",
        diagnosed_on=date(2026, 10, 2),
    ),
    tnm=Tnm("T1c", "N0", "M0", "IA"),
    ecog=0,
    proposal=(
        ProposalItem("radiotherapy", "Radiothérapie adjuvante du sein, 15 fractions"),
        ProposalItem("hormone-therapy", "Hormonothérapie par létrozole pendant 5 ans"),
    ),
    guideline_conform=True,
    guideline="Référentiel national cancer du sein 2025",
    participants=BOARD,
    quorum_met=True,
    patient_informed=True,
    trial_proposed=True,
    trial_id="NCT05012345",
    trial_name="Désescalade de la radiothérapie",
)
COLON = RcpReport(
    board="RCP digestive",
    meeting=MEETING,
    case_status="re-presentation",
    question="Stratégie devant une métastase hépatique unique d'un adénocarcinome colique ?",
    history="Colectomie droite en 2025 (pT3 N1a), chimiothérapie adjuvante FOLFOX.",
    diagnosis=CancerDiagnosis(
        icd10="C78.7",
        label="Tumeur maligne secondaire du foie",
        topography="C22.0",
        topography_label="Foie",
        morphology="8140/6",
        morphology_label="Adénocarcinome, métastatique",
        status="secondary",
    ),
    tnm=Tnm("TX", "N1a", "M1a", "IVA"),
    ecog=1,
    proposal=(
        ProposalItem("chemotherapy", "Chimiothérapie FOLFIRI et bévacizumab, 6 cycles"),
        ProposalItem("surgery", "Réévaluation pour hépatectomie après 3 mois"),
    ),
    guideline_conform=False,
    deviation_reason="Patient refuse une hépatectomie d'emblée ; choix éclairé documenté.",
    participants=(
        replace(SURGEON, specialty="visceral-surgery"),
        ONCOLOGIST,
        RADIOTHERAPIST,
        replace(GP, specialty="gastroenterology"),
    ),
    quorum_met=True,
    patient_informed=True,
)


def rcp_header(patient: Patient = ANNE) -> Header:
    return replace(header(patient, ONCOLOGIST), organisation=HOSPITAL, confidentiality="R")


@pytest.mark.parametrize(
    ("report", "patient"), [(BREAST, ANNE), (COLON, JEAN)], ids=["breast", "colon"]
)
def test_rcp_report_validates(report: RcpReport, patient: Patient) -> None:
    xml = build_rcp_report(report, rcp_header(patient), now=NOW)
    assert validate_cda(xml) == []
    assert document_kind(xml) == "rcp-report"
    doc = parse(xml)
    loinc = "2.16.840.1.113883.6.1"

    def value(code: str) -> str:
        return str(
            doc.xpath(
                f"string(.//h:observation[h:code/@code='{code}' and h:code/@codeSystem='{loinc}']/h:value/@code)",
                namespaces=NS,
            )
        )

    assert (value("21905-5"), value("21906-3"), value("21907-1"), value("21908-9")) == (
        report.tnm.t,
        report.tnm.n,
        report.tnm.m,
        report.tnm.stage,
    )
    assert value("89247-1") == ("LA9622-7" if report.ecog == 0 else "LA9623-5")
    assert value("29308-4") == report.diagnosis.icd10
    performers = doc.xpath(
        "h:documentationOf/h:serviceEvent/h:performer/h:assignedEntity/h:code/@code", namespaces=NS
    )
    assert performers == [p.specialty for p in report.participants]
    proposals = doc.xpath(".//h:act[@moodCode='PRP']/h:code/@code", namespaces=NS)
    assert proposals == [i.kind for i in report.proposal]
    text = xml.decode()
    assert "Justification" in text if not report.guideline_conform else "conforme aux" in text


def test_quorum_rule() -> None:
    assert quorum_reached(BOARD)
    assert not quorum_reached(
        (SURGEON, ONCOLOGIST, replace(RADIOTHERAPIST, specialty="breast-surgery"))
    )


def fields_of(report: RcpReport) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        build_rcp_report(report, rcp_header(), now=NOW)
    return info.value.fields


def test_bad_reports_are_refused() -> None:
    fields = fields_of(
        replace(
            BREAST,
            diagnosis=replace(
                BREAST.diagnosis, icd10="J11.1", topography="50.4", morphology="8500"
            ),
            tnm=Tnm("T9", "N0", "M0", "VI"),
            ecog=7,
            proposal=(),
            guideline_conform=False,
            participants=(SURGEON, ONCOLOGIST),
            patient_informed=False,
            trial_proposed=False,
            meeting=datetime(2026, 12, 1, tzinfo=UTC),
        )
    )
    assert fields == {
        "meeting": "is in the future",
        "diagnosis.icd10": "'J11.1' is not a neoplasm code (C00 to D48)",
        "diagnosis.topography": "'50.4' is not an ICD-O-3 topography (e.g. C50.4)",
        "diagnosis.morphology": "'8500' is not an ICD-O-3 morphology (e.g. 8500/3)",
        "tnm.t": "unknown TNM category 'T9'",
        "tnm.stage": "unknown stage group 'VI'",
        "ecog": "the WHO/ECOG performance status is 0 to 5",
        "proposal": "the board's proposal is required",
        "deviation_reason": "a deviation from the guidelines must be justified",
        "trial_id": "only a proposed trial has an id",
        "quorum_met": "the quorum needs at least 3 physicians of 3 different specialties",
        "patient_informed": "the patient must be informed before the case is presented",
    }


def test_authenticator_must_have_taken_part() -> None:
    fields = fields_of(replace(BREAST, participants=(SURGEON, RADIOTHERAPIST, PATHOLOGIST)))
    assert fields == {"legal_authenticator": "the report is authenticated by a participant"}


def test_unknown_codes_refused() -> None:
    fields = fields_of(
        replace(
            BREAST,
            case_status="urgent",
            proposal=(ProposalItem("magic", "x"),),
            diagnosis=replace(BREAST.diagnosis, status="tertiary"),
        )
    )
    assert set(fields) == {"case_status", "proposal.0.kind", "diagnosis.status"}


def test_profile_requires_rcp_sections_and_tnm() -> None:
    xml = build_rcp_report(BREAST, rcp_header(), now=NOW)
    doc = parse(xml)
    section = doc.xpath(".//h:section[h:code/@code='SEC-QUORUM']/..", namespaces=NS)[0]
    section.getparent().remove(section)
    obs = doc.xpath(".//h:observation[h:code/@code='21906-3']/..", namespaces=NS)[0]
    obs.getparent().remove(obs)
    problems = validate_cda(etree.tostring(doc))
    assert "required section SEC-QUORUM (Quorum et participants) is missing" in problems
    assert "required entry 21906-3 (Ganglions régionaux (N clinique)) is missing" in problems
    assert "required entry QUORUM-MET (Quorum atteint) is missing" in problems
    bad = xml.replace(b'code="8500/3"', b'code="8500"')
    assert "'8500' is not a valid ICD-O-3 code here" in validate_cda(bad)


def test_profile_checks_tnm_ecog_and_quorum() -> None:
    xml = build_rcp_report(BREAST, rcp_header(), now=NOW)
    doc = parse(xml)
    t_value = doc.xpath(".//h:observation[h:code/@code='21905-5']/h:value", namespaces=NS)[0]
    t_value.set("code", "N1")
    ecog = doc.xpath(".//h:observation[h:code/@code='89247-1']/h:value", namespaces=NS)[0]
    ecog.set("code", "LA9999-9")
    performers = doc.xpath("h:documentationOf/h:serviceEvent/h:performer", namespaces=NS)
    for performer in performers[2:]:
        performer.getparent().remove(performer)
    problems = validate_cda(etree.tostring(doc))
    assert problems == [
        "'N1' is not a valid clinical T category",
        "'LA9999-9' is not a valid WHO/ECOG answer (LOINC LL529-9)",
        "quorum declared met with 2 specialties among the participants (at least 3 needed)",
    ]
