"""The body written as one string (section scaffolding + narrative parts, builder.build) gives the
very bytes the former element-by-element construction made: every document the builder tests
and the sample documents below build is compared byte for byte with ``reference_build``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
from lxml import etree

from workflow.cda import builder, codes, prescription, rcp_report, sick_leave, teleconsultation
from workflow.cda.builder import (
    DocumentSpec,
    Element,
    Section,
    _header_xml,
    code_el,
    ii,
    narrative_env,
    observation,
    q,
    sub,
    v_ad,
    v_bl,
    v_cd,
    v_ts,
)
from workflow.cda.codes import Code
from workflow.cda.sick_leave import Diagnosis, SickLeave, _child_subject, _ignore
from workflow.cda.values import Address, Identifier
from workflow.cda.xsd import SAFE_PARSER
from workflow.models import new_id

from .helpers import certificate_cda, teleconsultation_cda
from .samples import ANNE, NOW, header


def reference_build(spec: DocumentSpec) -> bytes:
    """builder.build() as it was before the body became one string."""
    h, now = spec.header, spec.now
    root = etree.fromstring(_header_xml(spec).encode(), SAFE_PARSER)
    if spec.documentation_of is not None:
        spec.documentation_of(root)
    if h.replaces is not None:
        related = sub(root, "relatedDocument", typeCode="RPLC")
        parent = sub(related, "parentDocument")
        ii(parent, "id", h.replaces.parent_id)
        ii(parent, "setId", h.set_id)
        sub(parent, "versionNumber", value=str(h.replaces.parent_version))
    if spec.component_of is not None:
        spec.component_of(root)
    xml = (
        narrative_env()
        .get_template(spec.narrative)
        .render(**{**spec.context, "header": h, "now": now})
    )
    narrative = etree.fromstring(xml.encode("utf-8"), SAFE_PARSER)
    parts = {str(part.get("name")): part for part in narrative.iter(q("part"))}
    body = sub(sub(root, "component"), "structuredBody")
    for s in spec.sections:
        section = sub(sub(body, "component"), "section")
        code_el(section, "code", s.code)
        sub(section, "title", s.title)
        text = sub(section, "text")
        part = parts[s.part]
        text.text = part.text
        for child in list(part):
            text.append(child)
        if s.subject is not None:
            s.subject(section)
        if s.entries is not None:
            s.entries(section)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def reference_sick_leave_sections(cert: SickLeave) -> list[Section]:
    """The sick-leave sections as build_sick_leave made them before: entries built with lxml."""
    kind = Code(cert.kind, codes.OID_KONSIL_CODES, codes.SICK_LEAVE_KINDS[cert.kind])

    def incapacity(section: Element) -> None:
        observation(
            section, codes.OBS_INCAPACITY, partial(v_cd, c=kind), when=(cert.start, cert.end)
        )
        observation(section, codes.OBS_FIRST_DAY_OFF, when=cert.first_day_off or cert.start)
        observation(section, codes.OBS_EXTENSION, partial(v_bl, value=cert.extension))
        observation(section, codes.OBS_OUTINGS, partial(v_bl, value=cert.outings_allowed))
        observation(section, codes.OBS_HOSPITALISED, partial(v_bl, value=cert.hospitalised))
        if cert.stay_address is not None:
            observation(section, codes.OBS_STAY_ADDRESS, partial(v_ad, a=cert.stay_address))

    sections = [Section(codes.SEC_INCAPACITY, "Incapacité de travail", "incapacity", incapacity)]
    if cert.diagnosis is not None:
        icd = Code(cert.diagnosis.code, codes.OID_ICD10, cert.diagnosis.label)
        sections.append(
            Section(
                codes.SEC_DIAGNOSIS,
                "Diagnostic",
                "diagnosis",
                lambda s: _ignore(observation(s, codes.OBS_DIAGNOSIS, partial(v_cd, c=icd))),
            )
        )
    if cert.accident is not None:
        acc = cert.accident
        acc_kind = Code(acc.kind, codes.OID_KONSIL_CODES, codes.ACCIDENT_KINDS[acc.kind])
        ref = Identifier(codes.OID_ACCIDENT_REFERENCE, acc.reference) if acc.reference else None
        sections.append(
            Section(
                codes.SEC_ACCIDENT,
                "Accident",
                "accident",
                lambda s: _ignore(
                    observation(
                        s, codes.OBS_ACCIDENT, partial(v_cd, c=acc_kind), when=acc.date, ident=ref
                    )
                ),
            )
        )
    if cert.child is not None:
        child = cert.child
        sections.append(
            Section(
                codes.SEC_FAMILY,
                "Enfant malade",
                "family",
                subject=lambda s: _child_subject(s, child),
            )
        )
    if cert.expected_delivery is not None:
        delivery = cert.expected_delivery
        sections.append(
            Section(
                codes.SEC_MATERNITY,
                "Maternité",
                "maternity",
                lambda s: _ignore(
                    observation(s, codes.OBS_EXPECTED_DELIVERY, partial(v_ts, value=delivery))
                ),
            )
        )
    return sections


BUILDERS = (sick_leave, prescription, rcp_report, teleconsultation)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every document built while active is also built the former way and compared."""
    kinds: list[str] = []

    def checked(spec: DocumentSpec) -> bytes:
        new = builder.build(spec)
        old = spec
        if spec.kind == "sick-leave":
            old = replace(spec, sections=reference_sick_leave_sections(spec.context["cert"]))
        assert new == reference_build(old), spec.kind
        kinds.append(spec.kind)
        return new

    for module in BUILDERS:
        monkeypatch.setattr(module, "build", checked)
    yield kinds


def _run_module_tests(module: Any) -> int:
    """Call a builder test module's plain (argument-free or parametrized-by-case) tests."""
    ran = 0
    for name in dir(module):
        fn = getattr(module, name)
        if not name.startswith("test_") or not callable(fn):
            continue
        marks = getattr(fn, "pytestmark", [])
        params = [m for m in marks if m.name == "parametrize"]
        if fn.__code__.co_argcount == 0:
            fn()
            ran += 1
        elif len(params) == 1 and fn.__code__.co_argcount == 1:
            for value in params[0].args[1]:
                fn(value)
                ran += 1
    return ran


def test_sample_documents_are_byte_identical(compared: list[str]) -> None:
    certificate_cda(ANNE.matricule, new_id())
    teleconsultation_cda(ANNE.matricule, new_id())
    assert compared == ["sick-leave", "teleconsultation-report"]


def test_awkward_entry_values_are_byte_identical(compared: list[str]) -> None:
    from .test_sick_leave import CASES

    awkward = 'A & "B" <c> l\'Ösling ]]> étage'
    for name, cert in CASES.items():
        changed = replace(
            cert,
            hospitalised=True,
            stay_address=Address(awkward, "L-1611", awkward, "LU"),
            diagnosis=Diagnosis("J06.9", awkward),
        )
        if cert.accident is not None:
            changed = replace(changed, accident=replace(cert.accident, reference=awkward))
        sick_leave.build_sick_leave(changed, header(), now=NOW)
        assert compared[-1] == "sick-leave", name
    assert len(compared) == len(CASES)


@pytest.mark.parametrize(
    "module_name", ["test_sick_leave", "test_teleconsultation_prescription", "test_rcp_report"]
)
def test_every_builder_test_document_is_byte_identical(
    compared: list[str], module_name: str
) -> None:
    import importlib

    module = importlib.import_module(f"tests.workflow.{module_name}")
    assert _run_module_tests(module) > 0
    assert compared, "no document was built"
