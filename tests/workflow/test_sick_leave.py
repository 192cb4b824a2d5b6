from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest
from lxml import etree

from konsil.errors import ValidationError
from konsil.identity.matricule import make_matricule
from workflow.cda.sick_leave import Accident, Child, Diagnosis, SickLeave, build_sick_leave
from workflow.cda.validation import document_kind, validate_cda
from workflow.cda.values import Address, Header, Identifier, Replacement
from workflow.cda.xsd import parse, schema_available

from .samples import ANNE, GP, JEAN, NOW, SUMMER, header

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
NS = {"h": "urn:hl7-org:v3", "sdtc": "urn:hl7-org:sdtc"}
FLU = Diagnosis("J11.1", "Grippe avec d'autres manifestations respiratoires")

CASES = {
    "illness": SickLeave("illness", date(2026, 11, 27), date(2026, 12, 3), diagnosis=FLU),
    "illness-extension-outings": SickLeave(
        "illness",
        date(2026, 11, 30),
        date(2026, 12, 11),
        first_day_off=date(2026, 11, 20),
        diagnosis=Diagnosis("F32.1", "Épisode dépressif moyen"),
        outings_allowed=True,
        extension=True,
        stay_address=Address("7, rue Principale", "L-6850", "Manternach"),
    ),
    "accident": SickLeave(
        "accident",
        date(2026, 11, 26),
        date(2026, 12, 20),
        diagnosis=Diagnosis("S82.6", "Fracture de la malléole externe"),
        accident=Accident("work", date(2026, 11, 25), "AAA-2026-004512"),
        hospitalised=True,
    ),
    "family-reason": SickLeave(
        "family-reason",
        date(2026, 11, 27),
        date(2026, 11, 28),
        diagnosis=Diagnosis("B01.9", "Varicelle sans complication"),
        child=Child(make_matricule("20200915", 31), "Léa", "Schmit"),
    ),
    "maternity": SickLeave(
        "maternity", date(2026, 12, 1), date(2027, 3, 31), expected_delivery=date(2027, 1, 26)
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_certificate_validates(case: str) -> None:
    xml = build_sick_leave(CASES[case], header(), now=NOW)
    assert validate_cda(xml) == []
    assert document_kind(xml) == "sick-leave"
    doc = parse(xml)
    assert doc.xpath("string(h:code/@code)", namespaces=NS) == "DT-20002"
    assert doc.xpath("h:templateId/@root", namespaces=NS) == ["1.3.182.11.1", "1.3.182.11.8"]
    assert doc.xpath("string(h:effectiveTime/@value)", namespaces=NS) == "20261127103000+0100"
    recipient = "string(h:informationRecipient/h:intendedRecipient/h:receivedOrganization/h:name)"
    assert doc.xpath(recipient, namespaces=NS) == "Caisse nationale de santé (CNS)"
    kind = doc.xpath(
        "string(.//h:observation[h:code/@code='INCAPACITY']/h:value/@code)", namespaces=NS
    )
    assert kind == CASES[case].kind


def test_details_are_coded() -> None:
    xml = build_sick_leave(CASES["accident"], header(), now=NOW)
    doc = parse(xml)
    acc = doc.xpath(".//h:observation[h:code/@code='ACCIDENT']", namespaces=NS)[0]
    assert acc.xpath("string(h:id/@extension)", namespaces=NS) == "AAA-2026-004512"
    assert acc.xpath("string(h:effectiveTime/@value)", namespaces=NS) == "20261125"
    diag = doc.xpath(".//h:observation[h:code/@code='29308-4']/h:value", namespaces=NS)[0]
    assert (diag.get("code"), diag.get("codeSystem")) == ("S82.6", "2.16.840.1.113883.6.3")
    child_xml = build_sick_leave(CASES["family-reason"], header(), now=NOW)
    child = parse(child_xml).xpath(".//h:relatedSubject/h:subject/sdtc:id", namespaces=NS)[0]
    assert child.get("extension") == make_matricule("20200915", 31)
    text = child_xml.decode()
    assert "Varicelle" in text and "Léa" in text


def test_local_time_in_summer_and_replacement() -> None:
    first = header()
    second = replace(
        first,
        document_id=Identifier("2.25.12345", "v2"),
        version=2,
        replaces=Replacement(first.document_id, 1),
    )
    cert = replace(CASES["illness"], start=date(2026, 7, 14), end=date(2026, 7, 17))
    xml = build_sick_leave(cert, second, now=SUMMER)
    assert validate_cda(xml) == []
    doc = parse(xml)
    assert doc.xpath("string(h:effectiveTime/@value)", namespaces=NS) == "20260714080000+0200"
    parent = doc.xpath("h:relatedDocument[@typeCode='RPLC']/h:parentDocument", namespaces=NS)[0]
    assert parent.xpath("string(h:id/@root)", namespaces=NS) == first.document_id.root
    assert parent.xpath("string(h:versionNumber/@value)", namespaces=NS) == "1"


def test_narrative_escapes_everything() -> None:
    nasty = Diagnosis("J06.9", '<script>alert("x")</script> & ]]> <paragraph>')
    patient = replace(ANNE, family_name="O'Brien <b>&amp;</b>")
    xml = build_sick_leave(replace(CASES["illness"], diagnosis=nasty), header(patient), now=NOW)
    assert validate_cda(xml) == []
    doc = parse(xml)
    assert not doc.xpath(".//h:script|.//h:b", namespaces=NS)
    assert '<script>alert("x")</script>' in "".join(doc.itertext())


def errors_of(cert: SickLeave, h: Header | None = None) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        build_sick_leave(cert, h or header(), now=NOW)
    return info.value.fields


def test_bad_inputs_are_refused_with_every_problem() -> None:
    bad_patient = replace(ANNE, matricule="1983041201265")
    fields = errors_of(
        replace(CASES["illness"], end=date(2026, 11, 20), diagnosis=None), header(bad_patient)
    )
    assert fields == {
        "patient.matricule": "the matricule's Verhoeff check digit (13th digit) is wrong",
        "end": "the incapacity ends before it starts",
        "diagnosis": "a diagnosis (ICD-10) is required",
    }


@pytest.mark.parametrize(
    ("cert", "field", "reason"),
    [
        (replace(CASES["illness"], kind="holiday"), "kind", "unknown code 'holiday'"),
        (
            replace(CASES["illness"], diagnosis=Diagnosis("flu", "Grippe")),
            "diagnosis.code",
            "not an ICD-10",
        ),
        (
            replace(CASES["illness"], diagnosis=Diagnosis("J11.1", " ")),
            "diagnosis.label",
            "is required",
        ),
        (replace(CASES["accident"], accident=None), "accident", "kind and date"),
        (
            replace(CASES["accident"], accident=Accident("meteor", date(2026, 11, 25))),
            "accident.kind",
            "unknown code 'meteor'",
        ),
        (
            replace(CASES["accident"], accident=Accident("work", date(2026, 11, 30))),
            "accident.date",
            "is in the future",
        ),
        (
            replace(CASES["illness"], accident=Accident("work", date(2026, 11, 25))),
            "accident",
            "only",
        ),
        (replace(CASES["family-reason"], child=None), "child", "names the sick child"),
        (
            replace(CASES["family-reason"], child=Child("2020091503100", "Léa", "Schmit")),
            "child.matricule",
            "check digit",
        ),
        (
            replace(CASES["family-reason"], child=Child(make_matricule("20050101", 1), "Max", "S")),
            "child.matricule",
            "18 or older",
        ),
        (replace(CASES["maternity"], expected_delivery=None), "expected_delivery", "presumed"),
        (
            replace(CASES["illness"], first_day_off=date(2026, 11, 28)),
            "first_day_off",
            "after the start",
        ),
        (replace(CASES["illness"], start=date(2026, 10, 1)), "start", "days before"),
        (replace(CASES["illness"], end=date(2028, 1, 1)), "end", "at most 366 days"),
        (
            replace(CASES["illness"], stay_address=Address("", "L-1", "Metz", "France")),
            "stay_address.street",
            "is required",
        ),
    ],
)
def test_refused(cert: SickLeave, field: str, reason: str) -> None:
    fields = errors_of(cert)
    assert field in fields, fields
    assert reason in fields[field]


def test_header_problems_are_listed() -> None:
    fields = errors_of(
        CASES["maternity"],
        replace(
            header(JEAN, replace(GP, specialty="astrology", cns_code="12")),
            confidentiality="X",
            version=2,
        ),
    )
    assert fields["kind"] == "maternity leave is for the mother"
    assert "unknown code 'X'" in fields["confidentiality"]
    assert fields["replaces"] == "a new version must name the document it replaces"
    assert "astrology" in fields["author.specialty"]
    assert fields["author.cns_code"].startswith("a CNS provider code has 8 digits")


def test_message_names_the_problems() -> None:
    with pytest.raises(ValidationError) as info:
        build_sick_leave(replace(CASES["illness"], diagnosis=None), header(), now=NOW)
    assert str(info.value) == (
        "the sick-leave certificate is not valid — diagnosis: a diagnosis (ICD-10) is required"
    )


def test_birth_date_must_match_matricule() -> None:
    fields = errors_of(CASES["illness"], header(replace(ANNE, birth_date=date(1983, 4, 13))))
    assert fields == {"patient.birth_date": "does not match the matricule"}


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_sick_leave(CASES["illness"], header(), now=NOW.replace(tzinfo=None))


def test_start_may_be_a_few_days_back() -> None:
    cert = replace(CASES["illness"], start=NOW.date() - timedelta(days=3))
    assert validate_cda(build_sick_leave(cert, header(), now=NOW)) == []
    tree = etree.fromstring(build_sick_leave(cert, header(), now=NOW))
    assert tree.tag == "{urn:hl7-org:v3}ClinicalDocument"
