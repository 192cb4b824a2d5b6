"""One entry point to validate a CDA document: XML Schema first, then Konsil's LU profile."""

from __future__ import annotations

from lxml import etree

from . import codes
from .profile import profile_problems
from .xsd import parse, xsd_errors


def validate_cda(xml: bytes) -> list[str]:
    """Every problem found, as readable lines; an empty list means the document is valid."""
    try:
        doc = parse(xml)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    return validate_tree(doc)


def validate_tree(doc: etree._Element) -> list[str]:
    """``validate_cda`` for a tree already parsed with ``xsd.parse``."""
    return xsd_errors(doc) + profile_problems(doc)


def document_kind(xml: bytes) -> str | None:
    """Konsil's kind (``sick-leave``, ``rcp-report``, …) from the DT code, or None if unknown."""
    try:
        doc = parse(xml)
    except etree.XMLSyntaxError:
        return None
    found = doc.xpath(
        "h:code[@codeSystem=$system]/@code",
        namespaces={"h": codes.HL7_NS},
        system=codes.OID_DOCUMENT_TYPES,
    )
    if not isinstance(found, list) or not found:
        return None
    dtype = codes.BY_DT_CODE.get(str(found[0]))
    return dtype.kind if dtype else None
