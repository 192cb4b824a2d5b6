from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from lxml import etree

from konsil.errors import ValidationError
from workflow.cda.prescription import (
    Medication,
    Prescription,
    PrescriptionLine,
    build_prescription,
)
from workflow.cda.sick_leave import Diagnosis
from workflow.cda.teleconsultation import Teleconsultation, build_teleconsultation
from workflow.cda.validation import document_kind, validate_cda
from workflow.cda.xsd import parse, schema_available

from .samples import JEAN, NOW, ONCOLOGIST, header

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
NS = {"h": "urn:hl7-org:v3", "xsi": "http://www.w3.org/2001/XMLSchema-instance"}

CONSULT = Teleconsultation(
    start=datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
    end=datetime(2026, 11, 27, 8, 20, tzinfo=UTC),
    modality="video",
    patient_consent=True,
    reason="Suivi de chimiothérapie, nausées depuis la cure 3.",
    present_illness="Nausées grade 2 depuis J2, pas de vomissements, alimentation conservée.",
    findings="Patient alerte, teint normal à l'écran, pas de signe de déshydratation rapporté.",
    diagnoses=(Diagnosis("R11", "Nausées et vomissements"),),
    plan="Ondansétron 8 mg à la demande ; réévaluation avant la cure 4.",
    follow_up=date(2026, 12, 4),
    consultants=(ONCOLOGIST,),
)
MINIMAL_CONSULT = Teleconsultation(
    start=datetime(2026, 11, 26, 17, 0, tzinfo=UTC),
    end=datetime(2026, 11, 26, 17, 10, tzinfo=UTC),
    modality="phone",
    patient_consent=True,
    reason="Question sur un résultat de prise de sang.",
    findings="Hémoglobine 13,2 g/dL, normale.",
    plan="Pas de mesure.",
)


@pytest.mark.parametrize("tc", [CONSULT, MINIMAL_CONSULT], ids=["video", "phone"])
def test_teleconsultation_validates(tc: Teleconsultation) -> None:
    xml = build_teleconsultation(tc, header(JEAN), now=NOW)
    assert validate_cda(xml) == []
    assert document_kind(xml) == "teleconsultation-report"
    doc = parse(xml)
    enc = doc.xpath("h:componentOf/h:encompassingEncounter", namespaces=NS)[0]
    assert enc.xpath("string(h:code/@code)", namespaces=NS) == "VR"
    assert enc.xpath("string(h:effectiveTime/h:low/@value)", namespaces=NS) == (
        "20261127090000+0100" if tc is CONSULT else "20261126180000+0100"
    )


def test_teleconsultation_refused() -> None:
    with pytest.raises(ValidationError) as info:
        build_teleconsultation(
            replace(
                CONSULT,
                end=CONSULT.start,
                patient_consent=False,
                modality="fax",
                plan="",
                diagnoses=(Diagnosis("nausea", "x"),),
                follow_up=date(2026, 11, 1),
            ),
            header(JEAN),
            now=NOW,
        )
    assert info.value.fields == {
        "end": "the teleconsultation ends before it starts",
        "modality": "unknown code 'fax' (one of: video, phone)",
        "patient_consent": "the patient must consent to the teleconsultation",
        "plan": "is required",
        "diagnoses.0.code": "'nausea' is not an ICD-10 code (e.g. J06.9)",
        "follow_up": "is in the past",
    }
    with pytest.raises(ValidationError) as info:
        build_teleconsultation(
            replace(CONSULT, end=datetime(2026, 11, 27, 10, 0, tzinfo=UTC)), header(JEAN), now=NOW
        )
    assert info.value.fields == {"end": "the teleconsultation has not ended yet"}


AMOXICILLIN = PrescriptionLine(
    Medication("J01CA04", "Amoxicilline 500 mg, gélule"),
    dose=Decimal(1),
    dose_unit="{caps}",
    route="20053000",
    times=3,
    per=1,
    period_unit="d",
    duration_days=7,
    quantity=Decimal(21),
    quantity_unit="{caps}",
    reimbursable=True,
    instructions="Pendant les repas",
)
PARACETAMOL = PrescriptionLine(
    Medication("N02BE01", "Paracétamol 1 g, comprimé"),
    dose=Decimal(1),
    dose_unit="{tbl}",
    route="20053000",
    times=4,
    per=1,
    period_unit="d",
    duration_days=5,
    quantity=Decimal(20),
    quantity_unit="{tbl}",
    reimbursable=False,
)
ENOXAPARIN = PrescriptionLine(
    Medication("B01AB05", "Énoxaparine 4000 UI/0,4 mL, seringue"),
    dose=Decimal("0.4"),
    dose_unit="mL",
    route="20066000",
    times=1,
    per=1,
    period_unit="d",
    duration_days=28,
    quantity=Decimal(28),
    quantity_unit="1",
    reimbursable=True,
)
VITAMIN_D = PrescriptionLine(
    Medication("A11CC05", "Cholécalciférol 25 000 UI, ampoule buvable"),
    dose=Decimal(1),
    dose_unit="1",
    route="20053000",
    times=1,
    per=2,
    period_unit="wk",
    duration_days=84,
    quantity=Decimal(6),
    quantity_unit="1",
    reimbursable=True,
)


def test_prescription_with_several_lines_validates() -> None:
    rx = Prescription(
        (AMOXICILLIN, PARACETAMOL, ENOXAPARIN, VITAMIN_D),
        start=date(2026, 11, 27),
        note="À renouveler 0 fois.",
    )
    xml = build_prescription(rx, header(JEAN), now=NOW)
    assert validate_cda(xml) == []
    assert document_kind(xml) == "prescription"
    doc = parse(xml)
    lines = doc.xpath(".//h:substanceAdministration", namespaces=NS)
    assert len(lines) == 4
    first = lines[0]
    assert first.xpath("string(.//h:manufacturedMaterial/h:code/@code)", namespaces=NS) == "J01CA04"
    assert (
        first.xpath("string(h:effectiveTime[@xsi:type='PIVL_TS']/h:period/@value)", namespaces=NS)
        == "8"
    )
    assert (
        first.xpath("string(h:effectiveTime[@xsi:type='IVL_TS']/h:high/@value)", namespaces=NS)
        == "20261203"
    )
    assert first.xpath("string(h:doseQuantity/@unit)", namespaces=NS) == "{caps}"
    assert first.xpath("string(.//h:supply/h:quantity/@value)", namespaces=NS) == "21"
    flags = doc.xpath(
        ".//h:observation[h:code/@code='CNS-REIMBURSABLE']/h:value/@value", namespaces=NS
    )
    assert flags == ["true", "false", "true", "true"]
    assert (
        lines[3].xpath(
            "string(h:effectiveTime[@xsi:type='PIVL_TS']/h:period/@value)", namespaces=NS
        )
        == "336"
    )
    text = xml.decode()
    assert (
        "3 fois par jour" in text and "1 fois par 2 semaines" in text and "non remboursable" in text
    )


def test_prescription_refused() -> None:
    bad = replace(
        AMOXICILLIN,
        medication=Medication("amoxicillin", ""),
        dose=Decimal(0),
        dose_unit="spoon",
        route="oral",
        times=0,
        period_unit="month",
        duration_days=0,
        quantity=Decimal("NaN"),
    )
    with pytest.raises(ValidationError) as info:
        build_prescription(Prescription((bad,), start=date(2026, 11, 1)), header(JEAN), now=NOW)
    fields = info.value.fields
    assert set(fields) == {
        "start",
        "lines.0.medication.atc",
        "lines.0.medication.name",
        "lines.0.dose",
        "lines.0.dose_unit",
        "lines.0.route",
        "lines.0.times",
        "lines.0.period_unit",
        "lines.0.duration_days",
        "lines.0.quantity",
    }
    assert fields["lines.0.medication.atc"] == "'amoxicillin' is not an ATC code (e.g. J01CA04)"
    with pytest.raises(ValidationError, match="at least one medication"):
        build_prescription(Prescription((), start=date(2026, 11, 27)), header(JEAN), now=NOW)


def test_profile_checks_prescription_lines() -> None:
    xml = build_prescription(
        Prescription((AMOXICILLIN,), start=date(2026, 11, 27)), header(JEAN), now=NOW
    )
    assert "'20099000' is not a known EDQM route code" in validate_cda(
        xml.replace(b'code="20053000"', b'code="20099000"')
    )
    assert "'J01CA4' is not a known ATC code" in validate_cda(
        xml.replace(b'"J01CA04"', b'"J01CA4"')
    )
    doc = parse(xml)
    rel = doc.xpath(
        ".//h:substanceAdministration/h:entryRelationship[h:observation]", namespaces=NS
    )[0]
    rel.getparent().remove(rel)
    problems = validate_cda(etree.tostring(doc))
    assert problems == ["medication line 1 does not say whether the CNS reimburses it"]
