"""Reading Konsil's CDA back: every sick-leave variant, teleconsultation report and prescription,
and their header, survive a round trip (build → read → the same values, and the same bytes again)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from tests.workflow.helpers import CONSULT
from tests.workflow.samples import JEAN, NOW, ONCOLOGIST, RADIOTHERAPIST, header
from tests.workflow.test_sick_leave import CASES
from tests.workflow.test_teleconsultation_prescription import (
    AMOXICILLIN,
    ENOXAPARIN,
    MINIMAL_CONSULT,
    PARACETAMOL,
    VITAMIN_D,
)
from tests.workflow.test_teleconsultation_prescription import CONSULT as TC_VIDEO
from workflow.cda.prescription import Prescription, build_prescription
from workflow.cda.reading import (
    read_header,
    read_prescription,
    read_sick_leave,
    read_teleconsultation,
)
from workflow.cda.sick_leave import Diagnosis, build_sick_leave
from workflow.cda.teleconsultation import Teleconsultation, build_teleconsultation
from workflow.cda.values import Identifier, Replacement


@pytest.mark.parametrize("case", CASES)
def test_certificate_round_trip(case: str) -> None:
    cert = CASES[case]
    h = header()
    xml = build_sick_leave(cert, h, now=NOW)
    read = read_sick_leave(xml)
    expected = cert if cert.first_day_off != cert.start else replace(cert, first_day_off=None)
    assert read == expected
    back = read_header(xml)
    assert back.effective_time == NOW
    assert back.header.patient == h.patient
    assert back.header.author == h.author
    assert back.header.document_id == h.document_id and back.header.replaces is None
    # the value read back builds the same document again
    assert build_sick_leave(read, back.header, now=back.effective_time) == xml


def test_replacement_header_is_read() -> None:
    h = replace(
        header(),
        document_id=Identifier("2.25.42"),
        version=2,
        replaces=Replacement(Identifier("2.25.41"), 1),
    )
    xml = build_sick_leave(CASES["illness"], h, now=NOW)
    back = read_header(xml).header
    assert back.version == 2 and back.replaces == Replacement(Identifier("2.25.41"), 1)
    assert back.set_id == h.set_id


def test_other_documents_are_not_certificates() -> None:
    xml = build_teleconsultation(CONSULT, header(), now=NOW)
    assert read_header(xml).header.patient == header().patient
    with pytest.raises(ValueError, match="not a sick-leave certificate"):
        read_sick_leave(xml)


# ---------------------------------------------------------------- teleconsultation, prescription

TRICKY = replace(
    TC_VIDEO,
    reason="Deux lignes :\n\t- nausées <grade 2> & fatigue\n- « question » sur l'ondansétron",
    findings="  Indentée, avec des  espaces doubles et un retour\nà la ligne.",
    present_illness=None,
    diagnoses=(Diagnosis("R11", "Nausées\tet vomissements"), Diagnosis("R53", "Malaise & fatigue")),
    follow_up=None,
    consultants=(ONCOLOGIST, RADIOTHERAPIST),
)


@pytest.mark.parametrize(
    "tc", [TC_VIDEO, MINIMAL_CONSULT, TRICKY], ids=["video", "phone", "tricky-text"]
)
def test_teleconsultation_round_trip(tc: Teleconsultation) -> None:
    h = header(JEAN)
    xml = build_teleconsultation(tc, h, now=NOW)
    read = read_teleconsultation(xml)
    assert read == tc
    assert read.start.utcoffset() is not None and read.reason == tc.reason
    back = read_header(xml)
    assert back.header.patient == h.patient and back.effective_time == NOW
    assert build_teleconsultation(read, back.header, now=back.effective_time) == xml


RX_CASES = {
    "four-lines-note": Prescription(
        (AMOXICILLIN, PARACETAMOL, ENOXAPARIN, VITAMIN_D),
        start=date(2026, 11, 27),
        note="À renouveler 0 fois.",
    ),
    "hours-and-text": Prescription(
        (
            replace(
                PARACETAMOL,
                per=6,
                period_unit="h",
                times=1,
                dose=Decimal("0.5"),
                instructions="Si douleur, 2 fois par jour au plus <avec> de l'eau\net un repas",
            ),
            replace(ENOXAPARIN, times=3, per=1, period_unit="wk", quantity=Decimal("12.5")),
        ),
        start=date(2026, 12, 10),
    ),
}


@pytest.mark.parametrize("case", RX_CASES)
def test_prescription_round_trip(case: str) -> None:
    rx = RX_CASES[case]
    h = header(JEAN)
    xml = build_prescription(rx, h, now=NOW)
    read = read_prescription(xml)
    assert read == rx
    back = read_header(xml)
    assert build_prescription(read, back.header, now=back.effective_time) == xml


def test_prescription_frequency_must_agree_with_its_entry() -> None:
    xml = build_prescription(
        Prescription((AMOXICILLIN,), start=date(2026, 11, 27)), header(), now=NOW
    )
    with pytest.raises(ValueError, match="every 12 h"):
        read_prescription(
            xml.replace(b'<period value="8" unit="h"/>', b'<period value="12" unit="h"/>')
        )


def test_each_reader_reads_its_own_type() -> None:
    report = build_teleconsultation(CONSULT, header(), now=NOW)
    rx = build_prescription(
        Prescription((AMOXICILLIN,), start=date(2026, 11, 27)), header(), now=NOW
    )
    with pytest.raises(ValueError, match="not a Prescription"):
        read_prescription(report)
    with pytest.raises(ValueError, match="not a Compte rendu"):
        read_teleconsultation(rx)
