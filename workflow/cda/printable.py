"""Printable copies of the sick-leave certificate: one for the patient, one for the employer.

The employer's copy carries only what the employer is entitled to: who, the period, the kind of
leave and the doctor — never the diagnosis, the accident's details, the sick child's identity,
hospitalisation or where the patient stays. HTML templates (``templates/documents/``) are
rendered to PDF with WeasyPrint; fetching any external resource is refused, so a document can
never make the server reach out to a URL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from weasyprint import HTML
from weasyprint.urls import URLFetcher

from . import codes
from .builder import narrative_env
from .sick_leave import SickLeave, check_sick_leave
from .values import Header

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
    html = sick_leave_html(cert, header, copy=copy, now=now)
    no_fetching = URLFetcher(allowed_protocols=())
    pdf = HTML(string=html, base_url=None, url_fetcher=no_fetching).write_pdf()
    assert isinstance(pdf, bytes)
    return pdf
