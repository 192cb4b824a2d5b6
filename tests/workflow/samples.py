"""Realistic inputs for the CDA builders, shared by the document tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from konsil.identity.matricule import make_matricule
from workflow.cda.values import (
    Address,
    Header,
    Identifier,
    Organisation,
    Patient,
    Practitioner,
    new_document_id,
)

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)  # 10:30 in Luxembourg
SUMMER = datetime(2026, 7, 14, 6, 0, tzinfo=UTC)  # 08:00 CEST
PRACTITIONERS = "2.25.219174435857448195926220386976085686005.3.3"
ORGS = "2.25.219174435857448195926220386976085686005.3.4"

ANNE = Patient(
    matricule=make_matricule("19830412", 12),
    given_name="Anne",
    family_name="Schmit",
    birth_date=date(1983, 4, 12),
    sex="F",
    address=Address("12, rue de la Gare", "L-1611", "Luxembourg"),
)
JEAN = Patient(
    matricule=make_matricule("19570203", 7),
    given_name="Jean",
    family_name="Muller-Hoffmann",
    birth_date=date(1957, 2, 3),
    sex="M",
    address=Address("3, an der Uecht", "L-9570", "Wiltz"),
)
GP = Practitioner(
    Identifier(PRACTITIONERS, "u-17"), "Marc", "Weber", "general-practice", "90812100"
)
SURGEON = Practitioner(Identifier(PRACTITIONERS, "u-21"), "Sophie", "Kieffer", "breast-surgery")
ONCOLOGIST = Practitioner(
    Identifier(PRACTITIONERS, "u-22"), "Paul", "Reuter", "medical-oncology", "91234500"
)
RADIOTHERAPIST = Practitioner(
    Identifier(PRACTITIONERS, "u-23"), "Lena", "Thill", "radiation-oncology"
)
PATHOLOGIST = Practitioner(Identifier(PRACTITIONERS, "u-24"), "Tom", "Hansen", "pathology")
CLINIC = Organisation(
    Identifier(ORGS, "cabinet-weber"),
    "Cabinet médical Weber",
    Address("5, avenue de la Liberté", "L-1930", "Luxembourg"),
)
HOSPITAL = Organisation(Identifier(ORGS, "chl"), "Centre hospitalier de Luxembourg")


def header(patient: Patient = ANNE, author: Practitioner = GP, **changes: object) -> Header:
    doc = new_document_id()
    base = Header(document_id=doc, set_id=doc, patient=patient, author=author, organisation=CLINIC)
    return replace(base, **changes)  # type: ignore[arg-type]
