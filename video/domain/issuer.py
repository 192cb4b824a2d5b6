"""The ``DocumentIssuer`` of the workflow package: build, validate, sign, store and queue.

Each after-call value is mapped to its workflow builder (``Teleconsultation``, ``SickLeave``,
``Prescription``) with a header naming the patient, the doctor (author and legal
authenticator) and the doctor's organisation. The CDA is validated (XML Schema + LU profile),
stored final and signed with the organisation's key, and queued in the caller's transaction:
the report and the prescription to the DSP, the sick-leave certificate to the CNS and the DSP.
A value the builders refuse raises ``ValidationError`` with the form's field names, so nothing
is written. Building, validating and rendering the patient's PDF happen in ``prepare_*``,
before the form's transaction; ``store`` signs, stores and queues inside it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor
from konsil.errors import NotFound, ValidationError
from konsil.identity.models import Account
from konsil.identity.models import Organisation as OrganisationRow
from konsil.identity.models import Patient as PatientRow
from konsil.identity.models import Practitioner as PractitionerRow
from video.domain.documents import (
    ConsultationReport,
    IssueContext,
    Issued,
    Prepared,
    Prescription,
    SickLeaveCertificate,
)
from workflow.cda import codes
from workflow.cda import prescription as rxcda
from workflow.cda.printable import narrative_pdf, printable_pdf, sick_leave_pdf
from workflow.cda.sick_leave import Accident, SickLeave, build_sick_leave
from workflow.cda.sick_leave import Diagnosis as CdaDiagnosis
from workflow.cda.teleconsultation import Teleconsultation, build_teleconsultation
from workflow.cda.validation import validate_cda
from workflow.cda.values import Header, Identifier, Organisation, Patient, Practitioner
from workflow.connectors.xds import oid_of
from workflow.documents import DocumentStore, NewDocument
from workflow.models import ClinicalDocument, OutboxMessage, new_id
from workflow.outbox import Outbox

SEX = {"F": "F", "M": "M", "U": "UN"}

# Builder field → after-call form field (the rest are shown as they are, in the form's errors).
_SICK_LEAVE_FIELDS = {
    "start": "sl_start",
    "end": "sl_end",
    "kind": "sl_kind",
    "diagnosis": "sl_dx_code",
    "diagnosis.code": "sl_dx_code",
    "diagnosis.label": "sl_dx_label",
    "accident": "sl_accident_kind",
    "accident.kind": "sl_accident_kind",
    "accident.date": "sl_accident_date",
    "accident.reference": "sl_accident_ref",
}
_REPORT_FIELDS = {
    "diagnoses.0.code": "dx_code",
    "diagnoses.0.label": "dx_label",
}
_RX_LINE_FIELDS = {
    "medication.atc": "atc",
    "medication.name": "name",
    "duration_days": "days",
}
_RX_LINE_RE = re.compile(r"^lines\.(\d+)\.(.+)$")


def _rx_field(name: str) -> str:
    m = _RX_LINE_RE.match(name)
    if m is None:
        return {"start": "rx_start", "note": "rx_note", "lines": "rx_1_name"}.get(name, name)
    rest = m.group(2)
    return f"rx_{int(m.group(1)) + 1}_{_RX_LINE_FIELDS.get(rest, rest)}"


def _form_fields(exc: ValidationError, mapper: Callable[[str], str]) -> ValidationError:
    return ValidationError(exc.message, fields={mapper(k): v for k, v in exc.fields.items()})


@dataclass(frozen=True)
class _Parties:
    document_id: str  # chosen here: the CDA carries it as its OID
    header: Header
    patient: PatientRow
    practitioner_id: str
    organisation_id: str


@dataclass(frozen=True)
class _Built:
    """A prepared document: its parties, workflow kind, validated CDA and where it goes."""

    parties: _Parties
    cda_kind: str
    xml: bytes
    targets: tuple[str, ...]


class WorkflowIssuer:
    def __init__(
        self, documents: DocumentStore, outbox: Outbox, wake: Callable[[], None] | None = None
    ) -> None:
        self.documents = documents
        self.outbox = outbox
        self._wake = wake

    def wake(self) -> None:
        if self._wake is not None:
            self._wake()

    async def _parties(self, s: AsyncSession, ctx: IssueContext) -> _Parties:
        document_id = new_id()
        account = await s.get(Account, ctx.practitioner_account_id)
        pr = (
            await s.get(PractitionerRow, account.practitioner_id)
            if account and account.practitioner_id
            else None
        )
        org_id = (pr.organisation_id if pr else None) or (
            account.organisation_id if account else None
        )
        org = await s.get(OrganisationRow, org_id) if org_id else None
        patient = await s.get(PatientRow, ctx.patient_id)
        problems: dict[str, str] = {}
        if pr is None:
            problems["author"] = "your account has no practitioner profile"
        elif not pr.specialty:
            problems["author.specialty"] = "your practitioner profile has no specialty"
        if org is None:
            problems["organisation"] = "your account belongs to no organisation"
        if problems or pr is None or org is None or patient is None:
            raise ValidationError(
                "documents cannot be issued: an administrator must complete your profile",
                fields=problems or {"patient": "unknown"},
            )
        author = Practitioner(
            Identifier(codes.OID_KONSIL_PRACTITIONER, pr.id),
            pr.given_name,
            pr.family_name,
            pr.specialty or "",
            pr.cns_provider_code or None,
        )
        ident = Identifier(oid_of(document_id))
        header = Header(
            document_id=ident,
            set_id=ident,
            patient=Patient(
                patient.matricule,
                patient.given_name,
                patient.family_name,
                patient.birth_date,
                SEX.get(patient.sex, "UN"),
            ),
            author=author,
            organisation=Organisation(Identifier(codes.OID_KONSIL_ORGANISATION, org.id), org.name),
            legal_authenticator=author,
        )
        return _Parties(document_id, header, patient, pr.id, org.id)

    @staticmethod
    def _checked(xml: bytes) -> bytes:
        problems = validate_cda(xml)
        if problems:  # the builders' output must pass; say which rule failed, keep nothing
            raise ValidationError(
                "the document does not pass validation", fields={"document": problems[0]}
            )
        return xml

    async def store(self, s: AsyncSession, ctx: IssueContext, prepared: Prepared) -> Issued:
        built = prepared.content
        assert isinstance(built, _Built)
        parties = built.parties
        dtype = codes.BY_KIND[built.cda_kind]
        payload = {"patient_matricule": parties.patient.matricule, "type_display": dtype.display}
        doc, _ = await self.documents.do_issue(
            s,
            Actor(ctx.practitioner_account_id),
            NewDocument(
                kind=built.cda_kind,
                type_code=dtype.code,
                patient_id=ctx.patient_id,
                organisation_id=parties.organisation_id,
                content=built.xml,
                author_account_id=ctx.practitioner_account_id,
                author_practitioner_id=parties.practitioner_id,
                legal_authenticator_id=parties.practitioner_id,
                document_id=parties.document_id,
            ),
            self.outbox,
            [(target, payload) for target in built.targets],
        )
        return Issued(doc.id, prepared.title, prepared.pdf)

    async def prepare_report(
        self, s: AsyncSession, ctx: IssueContext, report: ConsultationReport
    ) -> Prepared:
        parties = await self._parties(s, ctx)
        tc = Teleconsultation(
            start=ctx.start,
            end=ctx.end,
            modality=ctx.modality,
            patient_consent=ctx.patient_consent,
            reason=report.reason,
            findings=report.findings,
            plan=report.plan,
            present_illness=report.present_illness,
            diagnoses=tuple(CdaDiagnosis(d.code, d.label) for d in report.diagnoses),
            follow_up=report.follow_up,
        )
        try:
            xml = build_teleconsultation(tc, parties.header, now=ctx.consultation_at)
        except ValidationError as exc:
            raise _form_fields(exc, lambda k: _REPORT_FIELDS.get(k, k)) from exc
        xml = self._checked(xml)
        pdf = await asyncio.to_thread(narrative_pdf, xml)
        kind = "teleconsultation-report"
        built = _Built(parties, kind, xml, ("dsp",))
        return Prepared("report", codes.BY_KIND[kind].display, pdf, built)

    async def prepare_sick_leave(
        self, s: AsyncSession, ctx: IssueContext, cert: SickLeaveCertificate
    ) -> Prepared:
        parties = await self._parties(s, ctx)
        accident = None
        if cert.kind == "accident" and cert.accident_kind and cert.accident_date:
            accident = Accident(cert.accident_kind, cert.accident_date, cert.accident_reference)
        value = SickLeave(
            cert.kind,
            cert.start,
            cert.end,
            diagnosis=CdaDiagnosis(cert.diagnosis.code, cert.diagnosis.label),
            accident=accident,
            outings_allowed=cert.outings_allowed,
        )
        now = ctx.consultation_at
        try:
            xml = build_sick_leave(value, parties.header, now=now)
        except ValidationError as exc:
            raise _form_fields(exc, lambda k: _SICK_LEAVE_FIELDS.get(k, k)) from exc
        xml = self._checked(xml)
        pdf = await asyncio.to_thread(
            sick_leave_pdf, value, parties.header, copy="patient", now=now
        )
        built = _Built(parties, "sick-leave", xml, ("cns", "dsp"))
        return Prepared("sick_leave", codes.BY_KIND["sick-leave"].display, pdf, built)

    async def prepare_prescription(
        self, s: AsyncSession, ctx: IssueContext, rx: Prescription
    ) -> Prepared:
        parties = await self._parties(s, ctx)
        value = rxcda.Prescription(
            tuple(
                rxcda.PrescriptionLine(
                    rxcda.Medication(line.atc, line.name),
                    line.dose,
                    line.dose_unit,
                    line.route,
                    line.times,
                    line.per,
                    line.period_unit,
                    line.duration_days,
                    line.quantity,
                    line.quantity_unit,
                    line.reimbursable,
                    line.instructions,
                )
                for line in rx.lines
            ),
            rx.start,
            rx.note,
        )
        try:
            xml = rxcda.build_prescription(value, parties.header, now=ctx.consultation_at)
        except ValidationError as exc:
            raise _form_fields(exc, _rx_field) from exc
        xml = self._checked(xml)
        pdf = await asyncio.to_thread(narrative_pdf, xml)
        built = _Built(parties, "prescription", xml, ("dsp",))
        return Prepared("prescription", codes.BY_KIND["prescription"].display, pdf, built)

    async def versions(
        self, s: AsyncSession, document_ids: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        if not document_ids:
            return {}
        doc = ClinicalDocument
        found = await s.execute(select(doc.id, doc.set_id).where(doc.id.in_(list(document_ids))))
        set_of = {str(doc_id): str(set_id) for doc_id, set_id in found.all()}
        newest: dict[str, tuple[int, str, str]] = {}
        rows = await s.execute(
            select(doc.set_id, doc.version, doc.id, doc.status).where(
                doc.set_id.in_(set(set_of.values()))
            )
        )
        for set_id, version, doc_id, status in rows.all():
            if set_id not in newest or version > newest[set_id][0]:
                newest[set_id] = (version, doc_id, status)
        return {d: newest[set_of[d]][1:] for d in document_ids if d in set_of}

    async def stored_version(self, s: AsyncSession, document_id: str) -> tuple[str, bytes]:
        found = (
            await s.execute(
                select(ClinicalDocument.kind, ClinicalDocument.content).where(
                    ClinicalDocument.id == document_id
                )
            )
        ).first()
        if found is None:
            raise NotFound("no such document")
        return str(found[0]), bytes(found[1])

    async def patient_copy(self, kind: str, content: bytes) -> bytes:
        return await asyncio.to_thread(printable_pdf, kind, content, "patient")

    async def delivery(
        self, s: AsyncSession, document_ids: Sequence[str]
    ) -> dict[str, list[tuple[str, str]]]:
        found: dict[str, list[tuple[str, str]]] = {d: [] for d in document_ids}
        if not document_ids:
            return found
        rows = (
            await s.execute(
                select(OutboxMessage.document_id, OutboxMessage.target, OutboxMessage.status)
                .where(OutboxMessage.document_id.in_(list(document_ids)))
                .order_by(OutboxMessage.target)
            )
        ).all()
        for document_id, target, status in rows:
            if document_id is not None:
                found[document_id].append((target, status))
        return found
