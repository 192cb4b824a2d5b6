"""Printable sick-leave certificates: the PDF holds what each reader may see, and no more; any
CDA's narrative as PDF."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from workflow.cda.sick_leave import Diagnosis, SickLeave

try:
    from workflow.cda.printable import (
        narrative_html,
        narrative_pdf,
        sick_leave_html,
        sick_leave_pdf,
    )
except OSError as exc:  # WeasyPrint loads Pango when imported
    pytest.skip(
        f"WeasyPrint cannot load Pango (apt-get install libpango-1.0-0 libpangoft2-1.0-0): {exc}",
        allow_module_level=True,
    )

from workflow.models import new_id

from .helpers import teleconsultation_cda
from .samples import ANNE, NOW, header
from .test_sick_leave import CASES


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return " ".join(text.split())  # layout breaks lines; compare on single spaces


def test_patient_and_employer_copies() -> None:
    cert = CASES["accident"]
    h = header()
    patient = pdf_text(sick_leave_pdf(cert, h, copy="patient", now=NOW))
    employer = pdf_text(sick_leave_pdf(cert, h, copy="employer", now=NOW))
    for text in (patient, employer):
        assert "Certificat d'incapacité de travail" in text
        assert "Schmit Anne" in text
        assert "du 26/11/2026 au 20/12/2026 inclus (25 jours)" in text
        assert "Dr Marc Weber" in text
        assert "27/11/2026 10:30" in text
    assert "Exemplaire destiné au patient" in patient
    assert "Fracture de la malléole externe" in patient and "S82.6" in patient
    assert "AAA-2026-004512" in patient
    assert "Exemplaire destiné à l'employeur" in employer
    for secret in (
        "Fracture",
        "S82.6",
        "AAA-2026-004512",
        "Accident du travail",
        "Hospitalisation",
    ):
        assert secret not in employer


def test_family_reason_employer_copy_hides_the_child() -> None:
    cert = CASES["family-reason"]
    employer = pdf_text(sick_leave_pdf(cert, header(), copy="employer", now=NOW))
    assert "Congé pour raisons familiales" in employer
    assert "Varicelle" not in employer and "Léa" not in employer
    patient = pdf_text(sick_leave_pdf(cert, header(), copy="patient", now=NOW))
    assert "Léa Schmit" in patient and "Varicelle" in patient


def test_html_is_escaped_and_never_fetches() -> None:
    cert = SickLeave(
        "illness",
        CASES["illness"].start,
        CASES["illness"].end,
        diagnosis=Diagnosis("J06.9", '<img src="http://127.0.0.1:9/x.png"> <b>gras</b>'),
    )
    html = sick_leave_html(cert, header(), copy="patient", now=NOW)
    assert "<img" not in html and "&lt;img src=" in html
    text = pdf_text(sick_leave_pdf(cert, header(), copy="patient", now=NOW))
    assert '<img src="http://127.0.0.1:9/x.png"> <b>gras</b>' in text


def test_unknown_copy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown copy"):
        sick_leave_html(CASES["illness"], header(), copy="insurer", now=NOW)  # type: ignore[arg-type]


def test_narrative_pdf_of_a_teleconsultation_report() -> None:
    xml = teleconsultation_cda(ANNE.matricule, new_id())
    html = narrative_html(xml)
    assert "<script" not in html and "ID=" not in html  # only known tags, no attributes
    text = pdf_text(narrative_pdf(xml))
    assert "Compte rendu de téléconsultation" in text
    assert "Constatations" in text and "Hémoglobine 13,2 g/dL, normale." in text
    assert "Schmit Anne" in text and "Dr Marc Weber" in text
