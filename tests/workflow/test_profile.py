"""The LU profile validator rejects what the XML Schema lets through, and validate_cda both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

import pytest
from lxml import etree

from workflow.cda.profile import parse_ts, profile_problems
from workflow.cda.sick_leave import Diagnosis, SickLeave, build_sick_leave
from workflow.cda.validation import document_kind, validate_cda
from workflow.cda.values import Identifier, Replacement
from workflow.cda.xsd import parse, schema_available, xsd_errors

from .samples import GP, NOW, ONCOLOGIST, header

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
NS = {"h": "urn:hl7-org:v3", "sdtc": "urn:hl7-org:sdtc"}
Mutation = Callable[[etree._Element], None]


def certificate() -> bytes:
    cert = SickLeave(
        "illness", date(2026, 11, 27), date(2026, 12, 3), diagnosis=Diagnosis("J11.1", "Grippe")
    )
    return build_sick_leave(cert, header(), now=NOW)


def one(doc: etree._Element, path: str) -> etree._Element:
    found = doc.xpath(path, namespaces=NS)
    assert isinstance(found, list) and found, path
    el = found[0]
    assert isinstance(el, etree._Element)
    return el


def set_attr(path: str, name: str, value: str) -> Mutation:
    return lambda doc: one(doc, path).set(name, value)


def remove(path: str) -> Mutation:
    def mutate(doc: etree._Element) -> None:
        el = one(doc, path)
        parent = el.getparent()
        assert parent is not None
        parent.remove(el)

    return mutate


def mutated(mutation: Mutation) -> bytes:
    doc = parse(certificate())
    mutation(doc)
    return bytes(etree.tostring(doc, xml_declaration=True, encoding="UTF-8"))


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (set_attr("h:realmCode", "code", "FR"), "realmCode must be exactly 'LU'"),
        (
            set_attr("h:recordTarget/h:patientRole/h:id", "root", "1.2.250.1.213.1.4.8"),
            "the patient has no matricule id (root 1.3.182.4.4)",
        ),
        (
            set_attr("h:recordTarget/h:patientRole/h:id", "extension", "1983041201265"),
            "patient matricule: the matricule's Verhoeff check digit (13th digit) is wrong",
        ),
        (
            set_attr("h:recordTarget/h:patientRole/h:patient/h:birthTime", "value", "19830413"),
            "patient matricule: the birth date does not match the matricule",
        ),
        (set_attr("h:code", "code", "DT-29999"), "unknown document type code DT-29999"),
        (set_attr("h:code", "code", "CIT"), "'CIT' is not a DT-xxxxx code"),
        (set_attr("h:code", "codeSystem", "2.16.840.1.113883.6.1"), "code system 1.3.182.5.9"),
        (set_attr("h:languageCode", "code", "de-LU"), "languageCode must be 'fr-LU'"),
        (set_attr("h:confidentialityCode", "code", "U"), "unknown confidentiality code 'U'"),
        (remove("h:templateId[@root='1.3.182.11.1']"), "header templateId 1.3.182.11.1"),
        (remove("h:templateId[@root='1.3.182.11.8']"), "needs templateId 1.3.182.11.8"),
        (set_attr("h:effectiveTime", "value", "20261127"), "with its UTC offset"),
        (set_attr("h:effectiveTime", "value", "20261327103000+0100"), "with its UTC offset"),
        (set_attr("h:versionNumber", "value", "2"), "must name the document it replaces"),
        (set_attr("h:id", "root", "not-an-oid"), "document id root 'not-an-oid' is not an OID"),
        (
            remove(".//h:section[h:code/@code='29548-5']/.."),
            "required section 29548-5 (Diagnostic) is missing",
        ),
        (
            set_attr(".//h:observation[h:code/@code='29308-4']/h:value", "code", "grippe"),
            "'grippe' is not a known ICD-10 code",
        ),
        (
            set_attr(".//h:observation[h:code/@code='INCAPACITY']/h:value", "code", "holiday"),
            "unknown sick-leave kind 'holiday'",
        ),
        (
            set_attr(".//h:observation[h:code/@code='INCAPACITY']//h:high", "value", "20261120"),
            "a period ends (2026-11-20) before it starts (2026-11-27)",
        ),
        (
            set_attr(
                ".//h:observation[h:code/@code='FIRST-DAY-OFF']/h:effectiveTime",
                "value",
                "20261201",
            ),
            "the first day off work is after the start of the incapacity",
        ),
        (
            set_attr(
                ".//h:observation[h:code/@code='OUTINGS-ALLOWED']/h:code", "codeSystem", "1.2.3"
            ),
            "unknown code system 1.2.3",
        ),
        (
            set_attr("h:author/h:assignedAuthor/h:code", "code", "astrology"),
            "'astrology' is not a known specialty code",
        ),
        (set_attr("h:legalAuthenticator/h:signatureCode", "code", "X"), "signatureCode must be S"),
        # rules answered from the one-walk index (profile._Index) rather than XPath
        (
            remove(".//h:observation[h:code/@code='INCAPACITY']/h:effectiveTime/h:high"),
            "the incapacity period needs a start and an end",
        ),
        (
            remove(".//h:observation[h:code/@code='INCAPACITY']/h:value"),
            "unknown sick-leave kind None",
        ),
        (
            remove(".//h:entry[h:observation/h:code/@code='INCAPACITY']"),
            "required entry INCAPACITY",
        ),
        (
            set_attr(".//h:observation[h:code/@code='INCAPACITY']//h:low", "value", "20261327"),
            "'20261327' is not a valid date or time",
        ),
        (
            set_attr("h:recordTarget/h:patientRole/h:patient/h:birthTime", "value", "2027"),
            "'2027' is not a valid date or time",
        ),
    ],
)
def test_profile_rejects(mutation: Mutation, expected: str) -> None:
    xml = mutated(mutation)
    problems = validate_cda(xml)
    assert any(expected in p for p in problems), problems


def test_valid_certificate_has_no_problem() -> None:
    assert profile_problems(parse(certificate())) == []


def test_coded_value_without_code_and_comments() -> None:
    doc = parse(certificate())
    value = one(doc, ".//h:observation[h:code/@code='INCAPACITY']/h:value")
    del value.attrib["code"]
    value.addprevious(etree.Comment(" a comment is not an element "))
    problems = profile_problems(doc)
    assert "a coded value has no code" in problems
    assert "unknown sick-leave kind None" in problems
    assert "None is not a valid sick-leave kind" in problems


def test_a_second_incapacity_observation_is_checked_too() -> None:
    doc = parse(certificate())
    entry = one(doc, ".//h:entry[h:observation/h:code/@code='INCAPACITY']")
    twin = etree.fromstring(etree.tostring(entry))
    value = twin.find("h:observation/h:value", NS)
    assert value is not None
    value.set("code", "holiday")
    entry.addnext(twin)
    problems = profile_problems(doc)
    # the variant comes from the first one; every one's value is checked
    assert "unknown sick-leave kind 'holiday'" not in problems
    assert "'holiday' is not a valid sick-leave kind" in problems


def test_empty_section_text_and_missing_patient() -> None:
    def blank(doc: etree._Element) -> None:
        text = one(doc, ".//h:section[h:code/@code='29548-5']/h:text")
        for child in list(text):
            text.remove(child)
        text.text = " "

    assert "section 29548-5 has no narrative text" in validate_cda(mutated(blank))
    assert any(
        "exactly one recordTarget" in p for p in validate_cda(mutated(remove("h:recordTarget")))
    )


def test_xsd_invalid_documents_are_rejected() -> None:
    xml = certificate()
    bad = xml.replace(b"<title>", b"<bogus/><title>", 1)
    problems = validate_cda(bad)
    assert any("bogus" in p for p in problems)
    assert xsd_errors(bad)
    assert validate_cda(b"<ClinicalDocument")[0].startswith("not well-formed XML")
    other = b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"/>'
    problems = validate_cda(other)
    assert "the root element is not an HL7 v3 ClinicalDocument" in problems


def test_document_kind() -> None:
    assert document_kind(certificate()) == "sick-leave"
    assert document_kind(mutated(set_attr("h:code", "code", "DT-29999"))) is None
    assert document_kind(b"not xml") is None


def test_parse_ts() -> None:
    assert parse_ts("20261127103000+0100") == date(2026, 11, 27)
    assert parse_ts("20261127") == date(2026, 11, 27)
    assert parse_ts("20260230") is None
    assert parse_ts("20261127256000") is None
    assert parse_ts("2026") is None


def test_profile_checks_dates_against_the_issue_date() -> None:
    backdated = mutated(
        set_attr(".//h:observation[h:code/@code='INCAPACITY']//h:low", "value", "20261101")
    )
    assert any("more than 7 days before" in p for p in validate_cda(backdated))
    unborn = mutated(set_attr("h:effectiveTime", "value", "19700101120000+0100"))
    problems = validate_cda(unborn)
    assert "the patient is born after the document was written" in problems
    assert "patient matricule: the matricule does not start with a possible birth date" in problems


@pytest.mark.parametrize("confidentiality", ["N", "R", "V"])
@pytest.mark.parametrize("version", [1, 3])
def test_header_variants_validate(confidentiality: str, version: int) -> None:
    first = header()
    h = replace(
        first,
        patient=replace(first.patient, address=None),
        author=replace(GP, cns_code=None),
        legal_authenticator=ONCOLOGIST,
        confidentiality=confidentiality,
        recipients=("Caisse nationale de santé",),
        title="Certificat d'incapacité de travail — rectificatif" if version > 1 else None,
    )
    if version > 1:
        h = replace(
            h,
            document_id=Identifier("2.25.4242", "v3"),
            version=3,
            replaces=Replacement(Identifier("2.25.4242", "v2"), 2),
        )
    cert = SickLeave(
        "illness", date(2026, 11, 27), date(2026, 11, 27), diagnosis=Diagnosis("R51", "Céphalée")
    )
    xml = build_sick_leave(cert, h, now=NOW)
    assert validate_cda(xml) == []
    doc = parse(xml)
    assert one(doc, "h:confidentialityCode").get("code") == confidentiality
    assert one(doc, "h:versionNumber").get("value") == str(version)
    assert one(doc, "h:legalAuthenticator/h:assignedEntity/h:id").get("extension") == "u-22"
