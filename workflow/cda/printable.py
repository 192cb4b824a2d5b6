"""Printable copies of the sick-leave certificate: one for the patient, one for the employer.

The employer's copy carries only what the employer is entitled to: who, the period, the kind of
leave and the doctor — never the diagnosis, the accident's details, the sick child's identity,
hospitalisation or where the patient stays. HTML templates (``templates/documents/``) are
rendered to PDF with WeasyPrint; fetching any external resource is refused, so a document can
never make the server reach out to a URL. ``narrative_pdf`` prints any CDA's narrative (the
teleconsultation report, the prescription) the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from lxml import etree

from . import codes
from .builder import narrative_env
from .reading import read_header, read_sick_leave
from .sick_leave import SickLeave, check_sick_leave
from .values import Header
from .xsd import parse

Copy = Literal["patient", "employer"]
COPIES: tuple[Copy, ...] = ("patient", "employer")


def sick_leave_html(cert: SickLeave, header: Header, *, copy: Copy, now: datetime) -> str:
    check_sick_leave(cert, header, now=now)
    if copy not in COPIES:
        raise ValueError(f"unknown copy {copy!r}")
    return (
        narrative_env()
        .get_template("sick_leave_print.html")
        .render(
            cert=cert,
            header=header,
            now=now,
            copy=copy,
            kind_label=codes.SICK_LEAVE_KINDS[cert.kind],
            accident_label=codes.ACCIDENT_KINDS[cert.accident.kind] if cert.accident else "",
            document_id=str(header.document_id),
        )
    )


def sick_leave_pdf(cert: SickLeave, header: Header, *, copy: Copy, now: datetime) -> bytes:
    """The PDF bytes of the patient's or the employer's copy."""
    return html_pdf(sick_leave_html(cert, header, copy=copy, now=now))


# CDA narrative blocks → HTML: the structural elements keep their meaning, anything else is a span.
_NARRATIVE_TAGS = {
    "paragraph": "p",
    "list": "ul",
    "item": "li",
    "table": "table",
    "thead": "thead",
    "tbody": "tbody",
    "tr": "tr",
    "th": "th",
    "td": "td",
    "caption": "caption",
    "br": "br",
}


def _narrative_html(text: etree._Element) -> str:
    """The section's narrative as HTML: only known tags, no attributes, every text escaped."""
    out = etree.Element("div")

    def copy(src: etree._Element, dst: etree._Element) -> None:
        if src.text:
            dst.text = (dst.text or "") + src.text
        for child in src:
            if not isinstance(child.tag, str):
                continue
            name = etree.QName(child).localname
            el = etree.SubElement(dst, _NARRATIVE_TAGS.get(name, "span"))
            copy(child, el)
            if child.tail:
                el.tail = child.tail

    copy(text, out)
    return str(etree.tostring(out, method="html", encoding="unicode"))


def _sections(doc: etree._Element) -> list[tuple[str, str]]:
    ns = {"h": codes.HL7_NS}
    return [
        (
            " ".join(str(s.xpath("string(h:title)", namespaces=ns)).split()),
            "".join(_narrative_html(t) for t in s.xpath("h:text", namespaces=ns)),
        )
        for s in doc.xpath("//h:section", namespaces=ns)
    ]


def narrative_sections(xml: bytes) -> list[tuple[str, str]]:
    """Each section's title and its narrative as safe HTML (known tags only, text escaped)."""
    return _sections(parse(xml))


def narrative_html(xml: bytes) -> str:
    """Any Konsil CDA as a printable HTML page: its title, patient, author and the narrative of
    every section (what a reader of the CDA sees)."""
    doc = parse(xml)
    ns = {"h": codes.HL7_NS}

    def first(path: str) -> str:
        found = doc.xpath(f"string({path})", namespaces=ns)
        return " ".join(str(found).split())

    sections = _sections(doc)
    patient = "h:recordTarget/h:patientRole"
    author = "h:author/h:assignedAuthor"
    return (
        narrative_env()
        .get_template("narrative_print.html")
        .render(
            title=first("h:title"),
            patient_name=first(f"{patient}/h:patient/h:name/h:family")
            + " "
            + first(f"{patient}/h:patient/h:name/h:given"),
            matricule=first(f"{patient}/h:id[@root='{codes.OID_MATRICULE}']/@extension"),
            author=first(f"{author}/h:assignedPerson/h:name/h:given")
            + " "
            + first(f"{author}/h:assignedPerson/h:name/h:family"),
            organisation=first(f"{author}/h:representedOrganization/h:name"),
            effective=first("h:effectiveTime/@value"),
            sections=sections,
            document_id=first("h:id/@root"),
        )
    )


def html_pdf(html: str) -> bytes:
    """Render HTML to PDF with every external fetch refused."""
    # WeasyPrint (~45 MB with Pango) is imported by the first PDF, not by every process
    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    pdf = HTML(string=html, base_url=None, url_fetcher=URLFetcher(allowed_protocols=())).write_pdf()
    assert isinstance(pdf, bytes)
    return pdf


def narrative_pdf(xml: bytes) -> bytes:
    """The PDF of a CDA's narrative (report, prescription)."""
    return html_pdf(narrative_html(xml))


def printable_pdf(kind: str, xml: bytes, copy: Copy = "patient") -> bytes:
    """The printable copy of a stored document: a sick-leave certificate's patient or employer
    copy (read back from its CDA), any other document's narrative."""
    if kind != "sick-leave":
        return narrative_pdf(xml)
    read = read_header(xml)
    return sick_leave_pdf(read_sick_leave(xml), read.header, copy=copy, now=read.effective_time)
