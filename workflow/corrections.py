"""Corrections by the author: a new version of a sick-leave certificate, or "entered in error".

``check_*`` then ``do_*``. A correction reads the certificate back from its signed CDA, lets the
author change the values, builds the new version with the same builder (so the same checks
refuse the same mistakes, with the same field names), validates it (XML Schema + LU profile) and
stores it through ``DocumentStore.do_replace`` — which marks the old version ``amended`` and
queues the new one for delivery in the same transaction (see ``workflow.documents``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from typing import Any

from konsil.audit.service import Actor
from konsil.auth.service import Principal
from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Conflict, Forbidden, NotFound, ValidationError
from workflow.cda import codes
from workflow.cda.reading import read_header, read_sick_leave
from workflow.cda.sick_leave import Accident, Child, Diagnosis, SickLeave, build_sick_leave
from workflow.cda.validation import validate_cda
from workflow.cda.values import Address, Identifier, Replacement
from workflow.documents import DocumentStore, NewDocument
from workflow.models import ClinicalDocument, new_id
from workflow.views import DocumentViews

# The form's (and the JSON body's) fields are the builder's own dotted names.
TEXT_FIELDS = (
    "kind",
    "start",
    "end",
    "first_day_off",
    "diagnosis.code",
    "diagnosis.label",
    "accident.kind",
    "accident.date",
    "accident.reference",
    "child.matricule",
    "child.given_name",
    "child.family_name",
    "expected_delivery",
    "stay_address.street",
    "stay_address.postal_code",
    "stay_address.city",
    "stay_address.country",
)
FLAGS = ("outings_allowed", "hospitalised", "extension")


def document_oid(hex_id: str) -> str:
    """The document's id as its CDA id and XDS uniqueId: ``2.25.<uuid as integer>``."""
    return f"2.25.{uuid.UUID(hex=hex_id).int}"


def flatten(body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"diagnosis": {"code": "J11.1"}}`` → ``{"diagnosis.code": "J11.1"}``."""
    flat: dict[str, Any] = {}
    for k, v in body.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def sick_leave_fields(cert: SickLeave) -> dict[str, str]:
    """A certificate as the correction form's values."""
    out: dict[str, str] = {
        "kind": cert.kind,
        "start": cert.start.isoformat(),
        "end": cert.end.isoformat(),
        "first_day_off": cert.first_day_off.isoformat() if cert.first_day_off else "",
        "expected_delivery": cert.expected_delivery.isoformat() if cert.expected_delivery else "",
    }
    if cert.diagnosis:
        out.update({"diagnosis.code": cert.diagnosis.code, "diagnosis.label": cert.diagnosis.label})
    if cert.accident:
        out.update(
            {
                "accident.kind": cert.accident.kind,
                "accident.date": cert.accident.date.isoformat(),
                "accident.reference": cert.accident.reference or "",
            }
        )
    if cert.child:
        out.update(
            {
                "child.matricule": cert.child.matricule,
                "child.given_name": cert.child.given_name,
                "child.family_name": cert.child.family_name,
            }
        )
    if cert.stay_address:
        a = cert.stay_address
        out.update(
            {
                "stay_address.street": a.street,
                "stay_address.postal_code": a.postal_code,
                "stay_address.city": a.city,
                "stay_address.country": a.country,
            }
        )
    for flag in FLAGS:
        out[flag] = "1" if getattr(cert, flag) else ""
    return out


def parse_sick_leave(fields: Mapping[str, Any]) -> SickLeave:
    """Form or JSON values → ``SickLeave``; malformed values are reported by field name (the
    builder's checks then judge the certificate itself)."""
    errors: dict[str, str] = {}

    def text(name: str) -> str:
        v = fields.get(name)
        return "" if v is None else str(v).strip()

    def day(name: str, *, required: bool = False) -> date | None:
        raw = text(name)
        if not raw:
            if required:
                errors[name] = "is required"
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            errors[name] = "expected a date (YYYY-MM-DD)"
            return None

    def flag(name: str) -> bool:
        v = fields.get(name)
        if isinstance(v, bool):
            return v
        return str(v or "").lower() in ("1", "true", "on", "yes")

    kind = text("kind")
    start, end = day("start", required=True), day("end", required=True)
    first_day_off, expected = day("first_day_off"), day("expected_delivery")
    accident_date = day("accident.date")
    if errors or start is None or end is None:
        raise ValidationError("the sick-leave certificate is not valid", fields=errors)
    diagnosis = None
    if text("diagnosis.code") or text("diagnosis.label"):
        diagnosis = Diagnosis(text("diagnosis.code"), text("diagnosis.label"))
    accident = None
    if text("accident.kind") or accident_date:
        if accident_date is None:
            raise ValidationError(
                "the sick-leave certificate is not valid", fields={"accident.date": "is required"}
            )
        accident = Accident(
            text("accident.kind"), accident_date, text("accident.reference") or None
        )
    child = None
    if text("child.matricule") or text("child.given_name") or text("child.family_name"):
        child = Child(text("child.matricule"), text("child.given_name"), text("child.family_name"))
    stay = None
    if text("stay_address.street") or text("stay_address.city"):
        stay = Address(
            text("stay_address.street"),
            text("stay_address.postal_code"),
            text("stay_address.city"),
            text("stay_address.country") or "LU",
        )
    return SickLeave(
        kind=kind,
        start=start,
        end=end,
        first_day_off=first_day_off,
        diagnosis=diagnosis,
        accident=accident,
        child=child,
        expected_delivery=expected,
        outings_allowed=flag("outings_allowed"),
        hospitalised=flag("hospitalised"),
        stay_address=stay,
        extension=flag("extension"),
    )


class Corrections:
    def __init__(
        self, db: Database, clock: Clock, documents: DocumentStore, views: DocumentViews
    ) -> None:
        self.db = db
        self.clock = clock
        self.documents = documents
        self.views = views

    async def current_certificate(
        self, actor: Actor, principal: Principal, document_id: str
    ) -> tuple[ClinicalDocument, SickLeave]:
        """The certificate the author may correct, as it was signed (audited read)."""
        opened = await self.views.open(actor, principal, document_id)
        check_correctable(opened.document, principal, kind="sick-leave")
        return opened.document, read_sick_leave(opened.document.content)

    async def do_correct_sick_leave(
        self, actor: Actor, principal: Principal, document_id: str, cert: SickLeave
    ) -> ClinicalDocument:
        """A new signed version of the certificate, replacing the old one, queued for delivery."""
        async with self.db.transaction() as s:
            old = await s.get(ClinicalDocument, document_id, with_for_update=True)
            if old is None or await self.views.may_open(s, principal, old) is None:
                raise NotFound("no such document")
            check_correctable(old, principal, kind="sick-leave")
            read = read_header(old.content)
            doc_id = new_id()
            header = replace(
                read.header,
                document_id=Identifier(document_oid(doc_id)),
                version=old.version + 1,
                replaces=Replacement(read.header.document_id, read.header.version),
            )
            xml = build_sick_leave(cert, header, now=self.clock.now())
            problems = validate_cda(xml)
            if problems:  # the builder's output must pass: say which rule failed, keep nothing
                raise ValidationError(
                    "the document does not pass validation", fields={"document": problems[0]}
                )
            return await self.documents.do_replace(
                s,
                actor,
                old.id,
                NewDocument(
                    kind=old.kind,
                    type_code=old.type_code,
                    patient_id=old.patient_id,
                    organisation_id=old.organisation_id,
                    content=xml,
                    author_account_id=old.author_account_id,
                    author_practitioner_id=old.author_practitioner_id,
                    legal_authenticator_id=old.legal_authenticator_id,
                    confidentiality=old.confidentiality,
                    mime_type=old.mime_type,
                    document_id=doc_id,
                ),
            )

    async def do_enter_in_error(
        self, actor: Actor, principal: Principal, document_id: str
    ) -> ClinicalDocument:
        """The author withdraws a document issued by mistake (no new version)."""
        async with self.db.transaction() as s:
            doc = await s.get(ClinicalDocument, document_id, with_for_update=True)
            if doc is None or await self.views.may_open(s, principal, doc) is None:
                raise NotFound("no such document")
            check_correctable(doc, principal)
            return await self.documents.do_mark_entered_in_error(s, actor, doc.id)


def check_correctable(
    doc: ClinicalDocument, principal: Principal, *, kind: str | None = None
) -> None:
    if doc.author_account_id != principal.account_id:
        raise Forbidden("only the document's author can correct it")
    if doc.status != "final":
        raise Conflict(
            "only the current version of a final document can be corrected",
            fields={"status": doc.status},
        )
    if kind is not None and doc.kind != kind:
        raise Conflict(
            f"this correction form is for {codes.BY_KIND[kind].display} documents",
            fields={"kind": doc.kind},
        )
