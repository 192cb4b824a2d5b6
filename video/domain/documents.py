"""After-call documents: typed values, their validation, and the ``DocumentIssuer`` seam.

``video.domain.issuer.WorkflowIssuer`` implements ``DocumentIssuer`` with the workflow package
(CDA builders, signing, outbox to DSP/CNS).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.errors import Reason, ValidationError

ICD10_RE = re.compile(r"^[A-TV-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
MAX_LEAVE_DAYS = 366
MAX_LINES = 5


# Vocabularies mirrored from the workflow package's CDA codes (video does not import workflow).
SICK_LEAVE_KINDS = ("illness", "accident")
ACCIDENT_KINDS = ("work", "commute", "private", "sport", "school")
ROUTES = {
    "20053000": "Oral",
    "20045000": "Intravenous",
    "20066000": "Subcutaneous",
    "20035000": "Intramuscular",
    "20003000": "Cutaneous",
    "20061000": "Rectal",
    "20020000": "Inhalation",
    "20057000": "Ocular",
}
UNITS = {
    "{tbl}": "tablet(s)",
    "{caps}": "capsule(s)",
    "mg": "mg",
    "g": "g",
    "ug": "µg",
    "mL": "mL",
    "[iU]": "IU",
    "1": "unit(s)",
}
FREQUENCY_UNITS = {"h": "hour", "d": "day", "wk": "week"}
ATC_RE = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")


@dataclass(frozen=True)
class IssueContext:
    appointment_id: str
    patient_id: str
    practitioner_account_id: str
    consultation_at: datetime  # when the documents were issued
    start: datetime  # the call: admitted (or scheduled) time …
    end: datetime  # … and hang-up (or issue) time
    modality: str = "video"
    patient_consent: bool = True  # recorded in video_consents before the patient could enter


@dataclass(frozen=True)
class Diagnosis:
    code: str  # ICD-10
    label: str


@dataclass(frozen=True)
class ConsultationReport:
    reason: str
    findings: str
    plan: str
    present_illness: str | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    follow_up: date | None = None


@dataclass(frozen=True)
class SickLeaveCertificate:
    """Certificat d'incapacité de travail (DT-20002)."""

    kind: str  # SICK_LEAVE_KINDS
    start: date
    end: date
    diagnosis: Diagnosis
    accident_kind: str | None = None  # ACCIDENT_KINDS, when kind is accident
    accident_date: date | None = None
    accident_reference: str | None = None
    outings_allowed: bool = False
    outing_hours: str | None = None


@dataclass(frozen=True)
class MedicationLine:
    atc: str
    name: str
    dose: Decimal
    dose_unit: str  # UNITS
    route: str  # ROUTES (EDQM)
    times: int  # administrations …
    per: int  # … per this many …
    period_unit: str  # … FREQUENCY_UNITS
    duration_days: int
    quantity: Decimal
    quantity_unit: str  # UNITS
    reimbursable: bool
    instructions: str | None = None


@dataclass(frozen=True)
class Prescription:
    lines: tuple[MedicationLine, ...]
    start: date
    note: str | None = None


@dataclass(frozen=True)
class AfterCallDocuments:
    report: ConsultationReport
    sick_leave: SickLeaveCertificate | None = None
    prescription: Prescription | None = None


@dataclass(frozen=True)
class Issued:
    """What the issuer hands back for one document: its id in the document store and the
    patient's printable copy (PDF)."""

    document_id: str
    title: str
    pdf: bytes


@dataclass(frozen=True)
class Prepared:
    """A document built, validated and rendered (the patient's PDF copy) but not stored yet;
    ``content`` is the issuer's own (what ``store`` needs)."""

    kind: str  # report | sick_leave | prescription
    title: str
    pdf: bytes
    content: Any


class DocumentIssuer(Protocol):
    """Turns after-call values into issued documents (signed CDA → DSP, CIT → CNS and DSP).

    Two steps, so that the slow part holds no write lock: the ``prepare_*`` methods read (a
    read-only session), build, validate and render the patient's copy, and raise
    ``ValidationError`` when a builder refuses a value (nothing is written); ``store`` is called
    inside the transaction that records the consultation's end, so a document and its outgoing
    messages commit with the form or not at all. ``wake`` is called after the commit.
    """

    async def prepare_report(
        self, s: AsyncSession, ctx: IssueContext, report: ConsultationReport
    ) -> Prepared: ...

    async def prepare_sick_leave(
        self, s: AsyncSession, ctx: IssueContext, cert: SickLeaveCertificate
    ) -> Prepared: ...

    async def prepare_prescription(
        self, s: AsyncSession, ctx: IssueContext, rx: Prescription
    ) -> Prepared: ...

    async def store(self, s: AsyncSession, ctx: IssueContext, prepared: Prepared) -> Issued: ...

    async def delivery(
        self, s: AsyncSession, document_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        """Each document's outgoing messages: (target, status)."""
        ...

    async def versions(
        self, s: AsyncSession, document_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        """For each issued document, the newest version of its set: (document id, status). The
        author may have corrected it (a new id) or withdrawn it (``entered-in-error``)."""
        ...

    async def stored_version(self, s: AsyncSession, document_id: str) -> tuple[str, bytes]:
        """One stored version's kind and exact bytes (to render its copy after the session)."""
        ...

    async def patient_copy(self, kind: str, content: bytes) -> bytes:
        """The patient's printable copy (PDF) of a stored version, rendered off the loop."""
        ...

    def wake(self) -> None: ...


# ---------------------------------------------------------------- the after-call form


def _text(
    form: Mapping[str, str], field: str, errors: dict[str, str], *, limit: int, required: bool
) -> str | None:
    v = form.get(field, "").strip()
    if not v:
        if required:
            errors[field] = "required"
        return None
    if len(v) > limit:
        errors[field] = Reason("at most {limit} characters", limit=limit)
    return v[:limit]


def _date(raw: str, field: str, errors: dict[str, str], *, required: bool = True) -> date | None:
    if not raw.strip():
        if required:
            errors[field] = "required (YYYY-MM-DD)"
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        errors[field] = "not a date"
        return None


def _icd10(raw: str, field: str, errors: dict[str, str], *, required: bool) -> str | None:
    v = raw.strip().upper()
    if not v:
        if required:
            errors[field] = "required"
        return None
    if not ICD10_RE.match(v):
        errors[field] = "not an ICD-10 code (e.g. J06.9)"
    return v


def _int(raw: str, field: str, errors: dict[str, str], lo: int, hi: int) -> int:
    try:
        n = int(raw.strip())
    except ValueError:
        errors[field] = "a whole number is required"
        return 0
    if not lo <= n <= hi:
        errors[field] = Reason("between {lo} and {hi}", lo=lo, hi=hi)
    return n


def _decimal(raw: str, field: str, errors: dict[str, str]) -> Decimal:
    try:
        d = Decimal(raw.strip().replace(",", "."))
    except InvalidOperation:
        errors[field] = "a number is required"
        return Decimal(0)
    if not d.is_finite() or d <= 0 or d > 10_000:
        errors[field] = "a positive number"
    return d


def _choice(form: Mapping[str, str], field: str, allowed: Any, errors: dict[str, str]) -> str:
    v = form.get(field, "")
    if v not in allowed:
        errors[field] = "choose one of the options"
    return v


def _diagnosis(
    form: Mapping[str, str], prefix: str, errors: dict[str, str], *, required: bool
) -> Diagnosis | None:
    code = _icd10(form.get(f"{prefix}_code", ""), f"{prefix}_code", errors, required=required)
    label = _text(form, f"{prefix}_label", errors, limit=200, required=code is not None)
    return Diagnosis(code, label) if code and label else None


def check_after_call(form: Mapping[str, str], consult_day: date) -> AfterCallDocuments:
    """Validate the after-call form as a whole; every problem is reported with its field."""
    errors: dict[str, str] = {}
    reason = _text(form, "reason", errors, limit=2000, required=True)
    illness = _text(form, "present_illness", errors, limit=5000, required=False)
    findings = _text(form, "findings", errors, limit=10_000, required=True)
    plan = _text(form, "plan", errors, limit=5000, required=True)
    dx = _diagnosis(form, "dx", errors, required=False)
    follow_up = _date(form.get("follow_up", ""), "follow_up", errors, required=False)
    if follow_up is not None and follow_up < consult_day:
        errors["follow_up"] = "is before the consultation"
    report = ConsultationReport(
        reason or "", findings or "", plan or "", illness, (dx,) if dx else (), follow_up
    )

    sick_leave = None
    if form.get("sick_leave") == "on":
        kind = _choice(form, "sl_kind", SICK_LEAVE_KINDS, errors)
        start = _date(form.get("sl_start", ""), "sl_start", errors)
        end = _date(form.get("sl_end", ""), "sl_end", errors)
        if start and end:
            if end < start:
                errors["sl_end"] = "is before the start"
            elif (end - start).days + 1 > MAX_LEAVE_DAYS:
                errors["sl_end"] = Reason(
                    "a certificate covers at most {days} days", days=MAX_LEAVE_DAYS
                )
            if start < consult_day - timedelta(days=3):
                errors["sl_start"] = "at most 3 days before the consultation"
        sl_dx = _diagnosis(form, "sl_dx", errors, required=True)
        acc_kind = acc_date = acc_ref = None
        if kind == "accident":
            acc_kind = _choice(form, "sl_accident_kind", ACCIDENT_KINDS, errors)
            acc_date = _date(form.get("sl_accident_date", ""), "sl_accident_date", errors)
            if acc_date and start and acc_date > start:
                errors["sl_accident_date"] = "is after the start of the leave"
            acc_ref = _text(form, "sl_accident_ref", errors, limit=64, required=False)
        outings = _choice(form, "sl_outings", ("yes", "no"), errors) == "yes"
        hours = _text(form, "sl_outing_hours", errors, limit=100, required=False)
        if start and end and sl_dx:
            sick_leave = SickLeaveCertificate(
                kind,
                start,
                end,
                sl_dx,
                acc_kind,
                acc_date,
                acc_ref,
                outings,
                hours if outings else None,
            )

    prescription = None
    if form.get("prescription") == "on":
        lines: list[MedicationLine] = []
        for i in range(1, MAX_LINES + 1):
            p = f"rx_{i}_"
            if not form.get(p + "name", "").strip():
                continue
            atc = form.get(p + "atc", "").strip().upper()
            if not ATC_RE.match(atc):
                errors[p + "atc"] = "an ATC code of 7 characters (e.g. N02BE01)"
            name = _text(form, p + "name", errors, limit=200, required=True) or ""
            lines.append(
                MedicationLine(
                    atc,
                    name,
                    _decimal(form.get(p + "dose", ""), p + "dose", errors),
                    _choice(form, p + "dose_unit", UNITS, errors),
                    _choice(form, p + "route", ROUTES, errors),
                    _int(form.get(p + "times", ""), p + "times", errors, 1, 24),
                    _int(form.get(p + "per", "1") or "1", p + "per", errors, 1, 30),
                    _choice(form, p + "period_unit", FREQUENCY_UNITS, errors),
                    _int(form.get(p + "days", ""), p + "days", errors, 1, 365),
                    _decimal(form.get(p + "quantity", ""), p + "quantity", errors),
                    _choice(form, p + "quantity_unit", UNITS, errors),
                    form.get(p + "reimbursable") == "on",
                    _text(form, p + "instructions", errors, limit=300, required=False),
                )
            )
        if not lines:
            errors["rx_1_name"] = "a prescription needs at least one medication"
        rx_start = _date(form.get("rx_start", ""), "rx_start", errors, required=False)
        prescription = Prescription(
            tuple(lines),
            rx_start or consult_day,
            _text(form, "rx_note", errors, limit=500, required=False),
        )

    if errors:
        raise ValidationError("the after-call documents are not complete", fields=errors)
    return AfterCallDocuments(report, sick_leave, prescription)
