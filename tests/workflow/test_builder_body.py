"""The body written as one string (section scaffolding + narrative parts, builder.build) gives the
very bytes the former element-by-element construction made: every document the builder tests
and the sample documents below build is compared byte for byte with ``reference_build``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

from workflow.cda import builder, prescription, rcp_report, sick_leave, teleconsultation
from workflow.cda.builder import (
    DocumentSpec,
    _header_xml,
    code_el,
    ii,
    narrative_env,
    q,
    sub,
)
from workflow.cda.xsd import SAFE_PARSER
from workflow.models import new_id

from .helpers import certificate_cda, teleconsultation_cda
from .samples import ANNE


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
    xml = narrative_env().get_template(spec.narrative).render(
        **{**spec.context, "header": h, "now": now}
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


BUILDERS = (sick_leave, prescription, rcp_report, teleconsultation)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every document built while active is also built the former way and compared."""
    kinds: list[str] = []

    def checked(spec: DocumentSpec) -> bytes:
        new = builder.build(spec)
        assert new == reference_build(spec), spec.kind
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
