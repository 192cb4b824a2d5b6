"""Corrections by the author: a new version of a document, or "entered in error".

Three document types are corrected here: the sick-leave certificate, the teleconsultation report
and the medication prescription (``CORRECTABLE``). The RCP report is not: it records a
tumour board's decision, which one author does not rewrite; a wrong one is marked entered in error
and the case goes to the board again (a new case, a new discussion, a new report).

A correction reads the document back from its signed CDA (``workflow.cda.reading``), lets the
author change the values — a form, or a JSON body, whose field names are the builder's own
(``diagnoses.0.code``, ``lines.1.route``) — builds the new version with the same builder (so the
same checks refuse the same mistakes, reported on the same fields), validates it (XML Schema + LU
profile) and stores it through ``DocumentStore.do_replace``, which marks the old version
``amended`` and queues the new one for delivery in the same transaction (``workflow.documents``).

What a correction cannot change: the patient, the author, the organisation (the header is the
signed one's), and for a teleconsultation report the call itself (when, video or phone, the
patient's consent, who else took part) — those were recorded from the call, not typed by the
author; a body naming them is refused.

Every opening of a correction form is audited as a read of the document (``document.read``,
``details.view = correction``); every refused correction (form or submission) as
``document.replace`` with outcome ``denied`` (not the author's) or ``failure`` (the document's
state, or the values), kept even though its transaction rolls back.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor
from konsil.auth.service import Principal
from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Conflict, Forbidden, KonsilError, NotFound, Reason, ValidationError
from workflow.cda import codes
from workflow.cda.prescription import Medication, Prescription, PrescriptionLine, build_prescription
from workflow.cda.reading import (
    read_header,
    read_prescription,
    read_sick_leave,
    read_teleconsultation,
)
from workflow.cda.sick_leave import Accident, Child, Diagnosis, SickLeave, build_sick_leave
from workflow.cda.teleconsultation import Teleconsultation, build_teleconsultation
from workflow.cda.validation import validate_cda
from workflow.cda.values import Address, Header, Identifier, Replacement, renamed
from workflow.documents import DocumentStore, NewDocument
from workflow.models import ClinicalDocument, new_id
from workflow.views import DocumentViews

V = TypeVar("V")

# ---------------------------------------------------------------- field names

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

REPORT_TEXTS = ("reason", "present_illness", "findings", "plan")
REPORT_FIELDS = (*REPORT_TEXTS, "follow_up")
DIAGNOSIS_FIELDS = ("code", "label")
# Recorded from the call by the video service: shown on the form, never changed by a correction.
CALL_FIELDS = ("start", "end", "modality", "patient_consent", "consultants")

LINE_FIELDS = (
    "medication.atc",
    "medication.name",
    "dose",
    "dose_unit",
    "route",
    "times",
    "per",
    "period_unit",
    "duration_days",
    "quantity",
    "quantity_unit",
    "reimbursable",
    "instructions",
)
LINE_REMOVE = "remove"  # a form's "remove this line" box (a JSON body leaves the line out)

_ROW_RE = re.compile(r"^([a-z_]+)\.(\d+)\.(.+)$")


def document_oid(hex_id: str) -> str:
    """The document's id as its CDA id and XDS uniqueId: ``2.25.<uuid as integer>``."""
    return f"2.25.{uuid.UUID(hex=hex_id).int}"


def flatten(body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"diagnosis": {"code": "J11.1"}}`` → ``{"diagnosis.code": "J11.1"}``; lists by position:
    ``{"lines": [{"dose": 1}]}`` → ``{"lines.0.dose": 1}``."""
    flat: dict[str, Any] = {}
    for k, v in body.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, Mapping):
                    flat.update(flatten(item, f"{prefix}{k}.{i}."))
                else:
                    flat[f"{prefix}{k}.{i}"] = item
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def row_count(values: Mapping[str, Any], name: str) -> int:
    """How many rows of the list ``name`` (``lines``, ``diagnoses``) hold a value."""
    count = 0
    for key, value in values.items():
        m = _ROW_RE.match(key)
        if m and m.group(1) == name and _filled(value):
            count = max(count, int(m.group(2)) + 1)
    return count


def _filled(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return value is not None and str(value).strip() != ""


# ---------------------------------------------------------------- reading form values


class _Fields:
    """Reads form or JSON values by name, collecting what is malformed by field name."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields
        self.errors: dict[str, str] = {}

    def text(self, name: str) -> str:
        v = self.fields.get(name)
        # a browser sends a textarea's line breaks as CR LF: one line break is "\n"
        return "" if v is None else str(v).replace("\r\n", "\n").strip()

    def day(self, name: str, *, required: bool = False) -> date | None:
        raw = self.text(name)
        if not raw:
            if required:
                self.errors[name] = "is required"
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            self.errors[name] = "expected a date (YYYY-MM-DD)"
            return None

    def flag(self, name: str) -> bool:
        v = self.fields.get(name)
        if isinstance(v, bool):
            return v
        return str(v or "").lower() in ("1", "true", "on", "yes")

    def whole(self, name: str, *, default: int | None = None) -> int:
        raw = self.text(name)
        if not raw:
            if default is not None:
                return default
            self.errors[name] = "is required"
            return 0
        try:
            return int(raw)
        except ValueError:
            self.errors[name] = "expected a whole number"
            return 0

    def number(self, name: str) -> Decimal:
        raw = self.text(name).replace(",", ".")
        if not raw:
            self.errors[name] = "is required"
            return Decimal(0)
        try:
            return Decimal(raw)
        except InvalidOperation:
            self.errors[name] = "expected a number"
            return Decimal(0)

    def rows(self, name: str) -> list[int]:
        """The positions of list ``name`` that the values mention, in order."""
        found = set()
        for key in self.fields:
            m = _ROW_RE.match(key)
            if m and m.group(1) == name:
                found.add(int(m.group(2)))
        return sorted(found)

    def only(
        self,
        allowed: Iterable[str],
        rows: Mapping[str, Iterable[str]] | None = None,
        *,
        fixed: Iterable[str] = (),
    ) -> None:
        """Refuse a field this document type does not have, rather than ignore it (a misspelt
        name would silently clear a value); ``fixed`` ones exist but are not the author's."""
        names, per_row, kept = set(allowed), dict(rows or {}), set(fixed)
        for key in self.fields:
            m = _ROW_RE.match(key)
            if key in names or (m and m.group(3) in set(per_row.get(m.group(1), ()))):
                continue
            if key.split(".", 1)[0] in kept:
                self.errors[key] = "is recorded from the call and cannot be corrected"
            else:
                self.errors[key] = "is not a field of this document"

    def raise_if_any(self, what: str) -> None:
        """``what``: the document, e.g. ``the prescription`` (a literal, translated too)."""
        if self.errors:
            raise ValidationError(
                Reason("{what} is not valid", what=Reason(what)), fields=self.errors
            )


@dataclass(frozen=True)
class Parsed(Generic[V]):
    """A corrected value and, for each list, the form row each item came from (a blank or
    removed row is left out, so the builder's ``lines.1`` may be the form's ``lines.2``)."""

    value: V
    rows: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def form_name(self, name: str) -> str:
        m = _ROW_RE.match(name)
        if m is None or m.group(1) not in self.rows:
            return name
        positions, i = self.rows[m.group(1)], int(m.group(2))
        return f"{m.group(1)}.{positions[i]}.{m.group(3)}" if i < len(positions) else name


# ---------------------------------------------------------------- the sick-leave certificate


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
    f = _Fields(fields)
    f.only((*TEXT_FIELDS, *FLAGS))
    text = f.text
    kind = text("kind")
    start, end = f.day("start", required=True), f.day("end", required=True)
    first_day_off, expected = f.day("first_day_off"), f.day("expected_delivery")
    accident_date = f.day("accident.date", required=bool(text("accident.kind")))
    f.raise_if_any("the sick-leave certificate")
    assert start is not None and end is not None  # required: refused above when missing
    diagnosis = None
    if text("diagnosis.code") or text("diagnosis.label"):
        diagnosis = Diagnosis(text("diagnosis.code"), text("diagnosis.label"))
    accident = None
    if accident_date is not None:  # (given whenever the accident's kind is)
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
        outings_allowed=f.flag("outings_allowed"),
        hospitalised=f.flag("hospitalised"),
        stay_address=stay,
        extension=f.flag("extension"),
    )


# ---------------------------------------------------------------- the teleconsultation report


def teleconsultation_fields(tc: Teleconsultation) -> dict[str, str]:
    """A report as the correction form's values (the call's facts are not among them)."""
    out = {
        "reason": tc.reason,
        "present_illness": tc.present_illness or "",
        "findings": tc.findings,
        "plan": tc.plan,
        "follow_up": tc.follow_up.isoformat() if tc.follow_up else "",
    }
    for i, d in enumerate(tc.diagnoses):
        out.update({f"diagnoses.{i}.code": d.code, f"diagnoses.{i}.label": d.label})
    return out


def parse_teleconsultation(
    fields: Mapping[str, Any], signed: Teleconsultation
) -> Parsed[Teleconsultation]:
    """Form or JSON values → the corrected report; the call's facts stay as signed. A diagnosis
    row left blank is no diagnosis."""
    f = _Fields(fields)
    f.only(REPORT_FIELDS, {"diagnoses": DIAGNOSIS_FIELDS}, fixed=CALL_FIELDS)
    follow_up = f.day("follow_up")
    diagnoses, positions = [], []
    for i in f.rows("diagnoses"):
        code, label = f.text(f"diagnoses.{i}.code"), f.text(f"diagnoses.{i}.label")
        if code or label:
            diagnoses.append(Diagnosis(code, label))
            positions.append(i)
    f.raise_if_any("the teleconsultation report")
    value = replace(
        signed,
        reason=f.text("reason"),
        present_illness=f.text("present_illness") or None,
        findings=f.text("findings"),
        plan=f.text("plan"),
        diagnoses=tuple(diagnoses),
        follow_up=follow_up,
    )
    return Parsed(value, {"diagnoses": tuple(positions)})


# ---------------------------------------------------------------- the prescription


def prescription_fields(rx: Prescription) -> dict[str, str]:
    """A prescription as the correction form's values."""
    out = {"start": rx.start.isoformat(), "note": rx.note or ""}
    for i, line in enumerate(rx.lines):
        p = f"lines.{i}."
        out.update(
            {
                p + "medication.atc": line.medication.atc,
                p + "medication.name": line.medication.name,
                p + "dose": str(line.dose),
                p + "dose_unit": line.dose_unit,
                p + "route": line.route,
                p + "times": str(line.times),
                p + "per": str(line.per),
                p + "period_unit": line.period_unit,
                p + "duration_days": str(line.duration_days),
                p + "quantity": str(line.quantity),
                p + "quantity_unit": line.quantity_unit,
                p + "reimbursable": "1" if line.reimbursable else "",
                p + "instructions": line.instructions or "",
            }
        )
    return out


def parse_prescription(fields: Mapping[str, Any], signed: Prescription) -> Parsed[Prescription]:
    """Form or JSON values → the corrected prescription. A line is left out when its row is
    blank or marked ``remove``; what is malformed is reported on the form's row."""
    f = _Fields(fields)
    f.only(("start", "note"), {"lines": (*LINE_FIELDS, LINE_REMOVE)})
    start = f.day("start", required=True)
    lines, positions = [], []
    for i in f.rows("lines"):
        p = f"lines.{i}."
        if f.flag(p + LINE_REMOVE) or not any(
            _filled(fields.get(p + name)) for name in LINE_FIELDS
        ):
            continue
        lines.append(
            PrescriptionLine(
                Medication(f.text(p + "medication.atc"), f.text(p + "medication.name")),
                dose=f.number(p + "dose"),
                dose_unit=f.text(p + "dose_unit"),
                route=f.text(p + "route"),
                times=f.whole(p + "times"),
                per=f.whole(p + "per", default=1),  # "3 times a day": per 1 day
                period_unit=f.text(p + "period_unit"),
                duration_days=f.whole(p + "duration_days"),
                quantity=f.number(p + "quantity"),
                quantity_unit=f.text(p + "quantity_unit"),
                reimbursable=f.flag(p + "reimbursable"),
                instructions=f.text(p + "instructions") or None,
            )
        )
        positions.append(i)
    f.raise_if_any("the prescription")
    assert start is not None
    value = replace(signed, lines=tuple(lines), start=start, note=f.text("note") or None)
    return Parsed(value, {"lines": tuple(positions)})


# ---------------------------------------------------------------- the types, and the service


@dataclass(frozen=True)
class CorrectionType(Generic[V]):
    """How one document type is read back, shown on a form, parsed and built again."""

    kind: str
    title: str  # the form's title (English source text, translated by the page)
    read: Callable[[bytes], V]
    values: Callable[[V], dict[str, str]]
    parse: Callable[[Mapping[str, Any], V], Parsed[V]]
    build: Callable[[V, Header, datetime], bytes]


CORRECTABLE: dict[str, CorrectionType[Any]] = {
    "sick-leave": CorrectionType[SickLeave](
        "sick-leave",
        "Correction of a sick-leave certificate",
        read_sick_leave,
        sick_leave_fields,
        lambda fields, _signed: Parsed(parse_sick_leave(fields)),
        lambda v, h, now: build_sick_leave(v, h, now=now),
    ),
    "teleconsultation-report": CorrectionType[Teleconsultation](
        "teleconsultation-report",
        "Correction of a teleconsultation report",
        read_teleconsultation,
        teleconsultation_fields,
        parse_teleconsultation,
        lambda v, h, now: build_teleconsultation(v, h, now=now),
    ),
    "prescription": CorrectionType[Prescription](
        "prescription",
        "Correction of a prescription",
        read_prescription,
        prescription_fields,
        parse_prescription,
        lambda v, h, now: build_prescription(v, h, now=now),
    ),
}
BOARD_KINDS = ("rcp-report",)  # a board's decision: entered in error, then discussed again


@dataclass(frozen=True)
class CorrectionForm:
    """What the correction page shows: the document, its values (as signed, or as submitted)
    and the signed value itself (a report's call, shown but not changed)."""

    document: ClinicalDocument
    correction: CorrectionType[Any]
    values: Mapping[str, Any]
    signed: Any

    def rows(self, name: str) -> int:
        return row_count(self.values, name)


class Corrections:
    def __init__(
        self, db: Database, clock: Clock, documents: DocumentStore, views: DocumentViews
    ) -> None:
        self.db = db
        self.clock = clock
        self.documents = documents
        self.views = views

    async def form(
        self,
        actor: Actor,
        principal: Principal,
        document_id: str,
        *,
        submitted: Mapping[str, Any] | None = None,
        refused: KonsilError | None = None,
    ) -> CorrectionForm:
        """The correction form of a document its author may correct, pre-filled with the values
        it was signed with (audited read). With ``refused`` (a submission just refused), the form
        shows what was ``submitted`` again, whatever the document's state now."""
        opened = await self.views.open(
            actor, principal, document_id, details={"view": "correction"}
        )
        doc = opened.document
        try:
            if refused is None:
                check_correctable(doc, principal)
            ctype = correction_type(doc.kind)
            signed = signed_value(ctype, doc)
        except KonsilError as exc:
            if refused is None:  # (a refused submission was audited as such)
                async with self.db.transaction() as s:
                    await self._refused(s, actor, doc, exc, step="form")
            raise
        values = dict(submitted) if submitted is not None else ctype.values(signed)
        return CorrectionForm(doc, ctype, values, signed)

    async def do_correct(
        self, actor: Actor, principal: Principal, document_id: str, fields: Mapping[str, Any]
    ) -> ClinicalDocument:
        """A new signed version of the document with the corrected ``fields`` (the builder's
        names), replacing the old one and queued for delivery where the old one went."""
        async with self.db.transaction() as s:
            old = await s.get(ClinicalDocument, document_id, with_for_update=True)
            if old is None:
                raise NotFound("no such document")
            try:
                if await self.views.may_open(s, principal, old) is None:
                    raise NotFound("no such document")  # never confirm someone else's exists
                check_correctable(old, principal)
                return await self._replace(s, actor, old, correction_type(old.kind), fields)
            except KonsilError as exc:
                await self._refused(s, actor, old, exc, step="submit")
                raise

    async def _replace(
        self,
        s: AsyncSession,
        actor: Actor,
        old: ClinicalDocument,
        ctype: CorrectionType[Any],
        fields: Mapping[str, Any],
    ) -> ClinicalDocument:
        parsed = ctype.parse(fields, signed_value(ctype, old))
        read = read_header(old.content)
        doc_id = new_id()
        header = replace(
            read.header,
            document_id=Identifier(document_oid(doc_id)),
            version=old.version + 1,
            replaces=Replacement(read.header.document_id, read.header.version),
        )
        try:
            xml = ctype.build(parsed.value, header, self.clock.now())
        except ValidationError as exc:  # the builder's names → the form's rows
            raise renamed(exc, parsed.form_name) from exc
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

    async def _refused(
        self, s: AsyncSession, actor: Actor, doc: ClinicalDocument, exc: KonsilError, *, step: str
    ) -> None:
        """Audit a refused correction (kept if ``s`` rolls back). Field names only, no values."""
        await self.documents.audit.record(
            s,
            actor,
            "document.replace",
            patient_id=doc.patient_id,
            resource=f"document/{doc.id}",
            outcome="denied" if isinstance(exc, (Forbidden, NotFound)) else "failure",
            details={"step": step, "refused": type(exc).__name__, "fields": sorted(exc.fields)},
        )


def correction_type(kind: str) -> CorrectionType[Any]:
    found = CORRECTABLE.get(kind)
    if found is not None:
        return found
    display = codes.BY_KIND[kind].display if kind in codes.BY_KIND else kind
    if kind in BOARD_KINDS:
        raise Conflict(
            Reason(
                "a {display} records a board's decision and is not corrected by one author: "
                "mark it as entered in error and submit the case to the board again",
                display=display,
            ),
            fields={"kind": kind},
        )
    raise Conflict(
        Reason("a {display} cannot be corrected", display=display), fields={"kind": kind}
    )


def signed_value(ctype: CorrectionType[V], doc: ClinicalDocument) -> V:
    """The value the document was signed with; Conflict when its CDA is not one the reader
    knows (not built by Konsil's builder, or by an older one it cannot read back)."""
    try:
        return ctype.read(doc.content)
    except ValueError as exc:
        raise Conflict(
            "the document cannot be read back for a correction: mark it entered in error and "
            "issue a new one",
            fields={"document": str(exc)},
        ) from exc


def check_correctable(doc: ClinicalDocument, principal: Principal) -> None:
    if doc.author_account_id != principal.account_id:
        raise Forbidden("only the document's author can correct it")
    if doc.status != "final":
        raise Conflict(
            "only the current version of a final document can be corrected",
            fields={"status": doc.status},
        )
