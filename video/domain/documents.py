"""After-call documents: typed values, their validation, and the ``DocumentIssuer`` seam.

The workflow package (CDA builders, signing, outbox to DSP/CNS) implements ``DocumentIssuer``.
Until it is wired in, ``PendingIssueQueue`` records each request in ``video_pending_issues``
with status ``pending``: that table is the queue the workflow adapter drains.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.errors import ValidationError
from video.models import VideoPendingIssue

ICD10_RE = re.compile(r"^[A-TV-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
MAX_LEAVE_DAYS = 366
MAX_LINES = 5


@dataclass(frozen=True)
class IssueContext:
    appointment_id: str
    patient_id: str
    practitioner_account_id: str
    consultation_at: datetime


@dataclass(frozen=True)
class ConsultationReport:
    text: str
    diagnosis_icd10: str | None = None


@dataclass(frozen=True)
class SickLeaveCertificate:
    """Certificat d'incapacité de travail (DT-20002)."""

    start: date
    end: date
    cause: str  # illness | accident
    accident_reference: str | None
    diagnosis_icd10: str
    outings_allowed: bool
    outing_hours: str | None = None


@dataclass(frozen=True)
class MedicationLine:
    medication: str
    dosage: str
    instructions: str
    duration_days: int
    quantity: int


@dataclass(frozen=True)
class Prescription:
    lines: tuple[MedicationLine, ...]
    note: str | None = None


@dataclass(frozen=True)
class AfterCallDocuments:
    report: ConsultationReport
    sick_leave: SickLeaveCertificate | None = None
    prescription: Prescription | None = None


class DocumentIssuer(Protocol):
    """Turns after-call values into issued documents (signed CDA → DSP, CIT → CNS).

    Called inside the transaction that records the consultation's end; returns a reference
    of the issued (or queued) document.
    """

    async def issue_report(
        self, s: AsyncSession, ctx: IssueContext, report: ConsultationReport
    ) -> str: ...

    async def issue_sick_leave(
        self, s: AsyncSession, ctx: IssueContext, cert: SickLeaveCertificate
    ) -> str: ...

    async def issue_prescription(
        self, s: AsyncSession, ctx: IssueContext, rx: Prescription
    ) -> str: ...


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


class PendingIssueQueue:
    """The honest in-package issuer: each request becomes a ``pending`` row for the workflow
    adapter to drain (it marks rows ``taken`` once it has built and queued the document)."""

    async def _put(self, s: AsyncSession, ctx: IssueContext, kind: str, value: Any) -> str:
        row = VideoPendingIssue(
            appointment_id=ctx.appointment_id,
            patient_id=ctx.patient_id,
            kind=kind,
            payload=json.dumps(
                {"context": _jsonable(ctx), "document": _jsonable(value)}, ensure_ascii=False
            ),
            status="pending",
            created_at=ctx.consultation_at,
        )
        s.add(row)
        await s.flush()
        return row.id

    async def issue_report(
        self, s: AsyncSession, ctx: IssueContext, report: ConsultationReport
    ) -> str:
        return await self._put(s, ctx, "report", report)

    async def issue_sick_leave(
        self, s: AsyncSession, ctx: IssueContext, cert: SickLeaveCertificate
    ) -> str:
        return await self._put(s, ctx, "sick_leave", cert)

    async def issue_prescription(self, s: AsyncSession, ctx: IssueContext, rx: Prescription) -> str:
        return await self._put(s, ctx, "prescription", rx)


# ---------------------------------------------------------------- the after-call form


def _date(raw: str, field: str, errors: dict[str, str]) -> date | None:
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        errors[field] = "required (YYYY-MM-DD)" if not raw.strip() else "not a date"
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
        errors[field] = f"between {lo} and {hi}"
    return n


def check_after_call(form: Mapping[str, str], consult_day: date) -> AfterCallDocuments:
    """Validate the after-call form as a whole; every problem is reported with its field."""
    errors: dict[str, str] = {}
    text = form.get("report", "").strip()
    if not text:
        errors["report"] = "required"
    elif len(text) > 20_000:
        errors["report"] = "at most 20000 characters"
    report = ConsultationReport(
        text, _icd10(form.get("report_diagnosis", ""), "report_diagnosis", errors, required=False)
    )

    sick_leave = None
    if form.get("sick_leave") == "on":
        start = _date(form.get("sl_start", ""), "sl_start", errors)
        end = _date(form.get("sl_end", ""), "sl_end", errors)
        if start and end:
            if end < start:
                errors["sl_end"] = "is before the start"
            elif (end - start).days + 1 > MAX_LEAVE_DAYS:
                errors["sl_end"] = f"a certificate covers at most {MAX_LEAVE_DAYS} days"
            if start < consult_day - timedelta(days=3):
                errors["sl_start"] = "at most 3 days before the consultation"
        cause = form.get("sl_cause", "")
        if cause not in ("illness", "accident"):
            errors["sl_cause"] = "illness or accident"
        ref = form.get("sl_accident_ref", "").strip() or None
        if cause == "accident" and not ref:
            errors["sl_accident_ref"] = "required for an accident"
        diag = _icd10(form.get("sl_diagnosis", ""), "sl_diagnosis", errors, required=True)
        outings = form.get("sl_outings", "")
        if outings not in ("yes", "no"):
            errors["sl_outings"] = "yes or no"
        hours = form.get("sl_outing_hours", "").strip() or None
        if start and end and diag is not None and cause in ("illness", "accident"):
            sick_leave = SickLeaveCertificate(
                start,
                end,
                cause,
                ref if cause == "accident" else None,
                diag,
                outings == "yes",
                hours if outings == "yes" else None,
            )

    prescription = None
    if form.get("prescription") == "on":
        lines: list[MedicationLine] = []
        for i in range(1, MAX_LINES + 1):
            name = form.get(f"rx_{i}_medication", "").strip()
            if not name:
                continue
            dosage = form.get(f"rx_{i}_dosage", "").strip()
            instr = form.get(f"rx_{i}_instructions", "").strip()
            if not dosage:
                errors[f"rx_{i}_dosage"] = "required"
            if not instr:
                errors[f"rx_{i}_instructions"] = "required"
            days = _int(form.get(f"rx_{i}_days", ""), f"rx_{i}_days", errors, 1, 365)
            qty = _int(form.get(f"rx_{i}_quantity", ""), f"rx_{i}_quantity", errors, 1, 99)
            lines.append(MedicationLine(name[:200], dosage[:100], instr[:300], days, qty))
        if not lines:
            errors["rx_1_medication"] = "a prescription needs at least one medication"
        prescription = Prescription(tuple(lines), form.get("rx_note", "").strip() or None)

    if errors:
        raise ValidationError("the after-call documents are not complete", fields=errors)
    return AfterCallDocuments(report, sick_leave, prescription)
