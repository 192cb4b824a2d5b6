"""The header written as one escaped string (builder._header_xml) is the very tree the former
element-by-element lxml construction made: compared byte for byte on varied headers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from lxml import etree

from workflow.cda import codes
from workflow.cda.builder import (
    NSMAP,
    DocumentSpec,
    _header_xml,
    addr,
    assigned_entity,
    day,
    ii,
    person_name,
    q,
    sub,
    ts,
)
from workflow.cda.values import Address, Header, Identifier, Patient, Replacement
from workflow.cda.xsd import SAFE_PARSER

from .samples import ANNE, CLINIC, GP, HOSPITAL, JEAN, NOW, ONCOLOGIST, SUMMER, SURGEON, header


def reference_header(spec: DocumentSpec) -> etree._Element:
    """The header as builder.build() made it before, one SubElement at a time."""
    dtype = codes.BY_KIND[spec.kind]
    h, now = spec.header, spec.now
    root = etree.Element(q("ClinicalDocument"), nsmap=NSMAP)
    sub(root, "realmCode", code=codes.LU_REALM)
    sub(root, "typeId", root=codes.CDA_TYPE_ID_ROOT, extension=codes.CDA_TYPE_ID_EXTENSION)
    sub(root, "templateId", root=codes.LU_HEADER_TEMPLATE)
    sub(root, "templateId", root=dtype.template)
    for t in spec.extra_templates:
        sub(root, "templateId", root=t)
    ii(root, "id", h.document_id)
    sub(
        root,
        "code",
        code=dtype.code,
        codeSystem=codes.OID_DOCUMENT_TYPES,
        codeSystemName="eSanté DocumentType",
        displayName=dtype.display,
    )
    sub(root, "title", h.title or dtype.display)
    sub(root, "effectiveTime", value=ts(now))
    sub(
        root,
        "confidentialityCode",
        code=h.confidentiality,
        codeSystem=codes.OID_CONFIDENTIALITY,
        displayName=codes.CONFIDENTIALITY.get(h.confidentiality),
    )
    sub(root, "languageCode", code=codes.LU_LANGUAGE)
    ii(root, "setId", h.set_id)
    sub(root, "versionNumber", value=str(h.version))
    role = sub(sub(root, "recordTarget"), "patientRole")
    sub(role, "id", root=codes.OID_MATRICULE, extension=h.patient.matricule)
    if h.patient.address:
        addr(role, h.patient.address, use="H")
    patient = sub(role, "patient")
    person_name(patient, h.patient.given_name, h.patient.family_name)
    sub(
        patient,
        "administrativeGenderCode",
        code=h.patient.sex,
        codeSystem=codes.OID_ADMIN_GENDER,
        displayName=codes.ADMIN_GENDER.get(h.patient.sex),
    )
    sub(patient, "birthTime", value=day(h.patient.birth_date))
    author = sub(root, "author")
    sub(author, "time", value=ts(now))
    assigned_entity(author, "assignedAuthor", h.author, h)
    org = sub(sub(sub(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization")
    ii(org, "id", h.organisation.id)
    sub(org, "name", h.organisation.name)
    if h.organisation.address:
        addr(org, h.organisation.address)
    for recipient in h.recipients:
        intended = sub(sub(root, "informationRecipient"), "intendedRecipient")
        sub(sub(intended, "receivedOrganization"), "name", recipient)
    legal = sub(root, "legalAuthenticator")
    sub(legal, "time", value=ts(now))
    sub(legal, "signatureCode", code="S")
    assigned_entity(legal, "assignedEntity", h.authenticator, h)
    return root


AWKWARD = 'Cabinet "A & B" <Weber> l\'Ösling\n\tétage 2\r'
NO_ADDRESS = Patient(ANNE.matricule, "Anne", "Schmit", ANNE.birth_date, "F")
HEADERS: list[tuple[str, Header]] = [
    ("plain", header()),
    ("other patient, author without CNS code", header(JEAN, SURGEON)),
    ("patient without address, organisation without", header(NO_ADDRESS, organisation=HOSPITAL)),
    ("another legal authenticator", header(legal_authenticator=ONCOLOGIST, confidentiality="R")),
    ("recipients and title", header(recipients=("CNS", AWKWARD), title=AWKWARD)),
    (
        "characters to escape everywhere",
        header(
            replace(ANNE, given_name=AWKWARD, address=Address(AWKWARD, "L-1611", AWKWARD)),
            replace(GP, family_name="<&>", title=""),
            organisation=replace(CLINIC, name=AWKWARD),
        ),
    ),
    (
        "version 2 with an empty title",
        header(
            version=2,
            replaces=Replacement(Identifier("1.2.3", "x"), 1),
            document_id=Identifier("1.2.3", 'e"&'),
            confidentiality="V",
        ),
    ),
]


@pytest.mark.parametrize(("label", "h"), HEADERS, ids=[label for label, _ in HEADERS])
@pytest.mark.parametrize("kind", ["sick-leave", "rcp-report", "prescription"])
def test_string_header_is_the_lxml_header(label: str, h: Header, kind: str) -> None:
    for now, extra in ((NOW, ()), (SUMMER, ("1.2.3.4",))):
        spec = DocumentSpec(kind, h, now, [], "sick_leave.xml", {}, extra_templates=extra)
        built = etree.fromstring(_header_xml(spec).encode(), SAFE_PARSER)
        expected = etree.tostring(reference_header(spec), encoding="UTF-8", pretty_print=True)
        assert etree.tostring(built, encoding="UTF-8", pretty_print=True) == expected, label
