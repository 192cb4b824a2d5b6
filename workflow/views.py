"""Who may see which documents, and the views the author and the care team get of them.

Rules (least privilege; ``docs/OUTBOX.md`` says the same):

- **The author's view**: a practitioner lists and opens the documents they authored, nobody
  else's.
- **A patient's documents** (on the patient's record): an administrator, or a practitioner with a
  care relationship to the patient — someone who authored a document about this patient. Konsil
  records no other treating relationship the workflow package can see (appointments belong to the
  video package, which workflow never imports), so authorship is the evidence. A document marked
  very restricted (confidentiality ``V``) is shown to its author only.
- Opening a document (narrative, CDA, signature, printable copies) is allowed to its author and to
  whoever may see the patient's documents, under the same ``V`` restriction.

Every listing and every opening is audited in the transaction that reads it: one event per
document shown (``document.list``), per document opened (``document.read``), per file given out
(``document.download``, ``document.print``). A refused access is audited too (``outcome``
``denied``), so a curious colleague leaves a trace.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Select, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from konsil.audit.service import Actor, AuditEntry, AuditLog
from konsil.auth.service import Principal
from konsil.db import Database
from konsil.errors import Forbidden, NotFound, ValidationError
from konsil.identity.models import Account, Patient
from workflow.cda import codes
from workflow.models import DOC_STATUSES, ClinicalDocument, OutboxMessage

KINDS = tuple(codes.BY_KIND)


def delivery_label(target: str, kind: str) -> str:
    """Which receiver, and what it was sent: ``CNS``, ``DSP withdrawal``."""
    return target.upper() + (" withdrawal" if kind == "withdrawal" else "")


@dataclass(frozen=True)
class TargetDelivery:
    """Where one version went and what the receiver answered."""

    target: str
    status: str  # pending | in_flight | delivered | rejected | dead
    attempts: int
    reference: str | None
    error: str | None
    delivered_at: datetime | None
    replaces: bool  # sent with the replacement relation
    kind: str = "document"  # or "withdrawal" (entered in error: workflow.withdrawal)

    @property
    def label(self) -> str:
        return delivery_label(self.target, self.kind)


@dataclass(frozen=True)
class DocumentSummary:
    id: str
    set_id: str
    version: int
    kind: str
    type_code: str
    type_display: str
    status: str
    confidentiality: str
    created_at: datetime
    patient_id: str
    patient_name: str
    patient_matricule: str
    author_account_id: str | None
    author_name: str
    replaces_id: str | None
    replaced_by_id: str | None
    size: int
    sha256: str
    signed: bool
    deliveries: tuple[TargetDelivery, ...]

    @property
    def rejection(self) -> str | None:
        """The receivers' reasons for refusing this version, if any refused it."""
        reasons = [
            f"{d.label}: {d.error}" for d in self.deliveries if d.status == "rejected" and d.error
        ]
        return "; ".join(reasons) or None


@dataclass(frozen=True)
class Filters:
    status: str | None = None
    kind: str | None = None

    @classmethod
    def parse(cls, status: str | None, kind: str | None) -> Filters:
        errors: dict[str, str] = {}
        if status and status not in DOC_STATUSES:
            errors["status"] = f"one of {', '.join(DOC_STATUSES)}"
        if kind and kind not in KINDS:
            errors["kind"] = f"one of {', '.join(KINDS)}"
        if errors:
            listed = "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise ValidationError(f"unknown filter — {listed}", fields=errors)
        return cls(status or None, kind or None)


@dataclass(frozen=True)
class Cursor:
    """Where a page of a listing ends (newest first, ties broken by id): the next page starts
    strictly after it. Keyset paging: a new document never shifts a page nor repeats a row, and
    each page is an index range whatever its depth."""

    created_at: datetime
    id: str

    def token(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str | None) -> Cursor | None:
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _, doc_id = raw.partition("|")
            created_at = datetime.fromisoformat(at)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            created_at, doc_id = None, ""
        if created_at is None or created_at.tzinfo is None or not doc_id.isalnum():
            raise ValidationError(
                "the page cursor is not one Konsil gave out",
                fields={"after": "use the value of next_cursor from the previous page"},
            )
        return cls(created_at, doc_id)


@dataclass(frozen=True)
class Page:
    rows: list[DocumentSummary]
    next_cursor: str | None  # None on the last page


Access = Literal["author", "care", "admin"]


@dataclass(frozen=True)
class Opened:
    document: ClinicalDocument  # with its bytes and signature
    summary: DocumentSummary
    versions: list[DocumentSummary]  # the whole set, newest first
    access: Access


class DocumentViews:
    """The read side of the document store, with its access rules; every access audited."""

    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    # ------------------------------------------------------------------ rules

    async def has_care_relationship(
        self, s: AsyncSession, principal: Principal, patient_id: str
    ) -> bool:
        if principal.role == "admin":
            return True
        if principal.role != "practitioner":
            return False
        q = select(
            exists().where(
                ClinicalDocument.patient_id == patient_id,
                ClinicalDocument.author_account_id == principal.account_id,
            )
        )
        return bool((await s.execute(q)).scalar())

    async def may_open(
        self, s: AsyncSession, principal: Principal, doc: ClinicalDocument
    ) -> Access | None:
        """Author, admin or care relationship; ``V`` documents to their author only."""
        if doc.author_account_id == principal.account_id:
            return "author"
        if doc.confidentiality != "V" and await self.has_care_relationship(
            s, principal, doc.patient_id
        ):
            return "admin" if principal.role == "admin" else "care"
        return None

    # ------------------------------------------------------------------ listings

    async def authored(
        self,
        actor: Actor,
        principal: Principal,
        filters: Filters,
        *,
        limit: int = 200,
        after: Cursor | None = None,
    ) -> Page:
        """The caller's own documents, newest first, ``limit`` at a time."""
        async with self.db.transaction() as s:
            q = self._query(filters, after).where(
                ClinicalDocument.author_account_id == principal.account_id
            )
            return await self._page(s, actor, q, limit)

    async def of_patient(
        self,
        actor: Actor,
        principal: Principal,
        patient_id: str,
        filters: Filters,
        *,
        limit: int = 200,
        after: Cursor | None = None,
    ) -> tuple[Patient, Page]:
        """A patient's documents for someone with a care relationship (or an admin)."""
        async with self.db.transaction() as s:
            patient = await s.get(Patient, patient_id)
            if patient is None:
                raise NotFound("no such patient")
            allowed = await self.has_care_relationship(s, principal, patient_id)
            if allowed:
                q = self._query(filters, after).where(
                    ClinicalDocument.patient_id == patient_id,
                    or_(
                        ClinicalDocument.confidentiality != "V",
                        ClinicalDocument.author_account_id == principal.account_id,
                    ),
                )
                return patient, await self._page(s, actor, q, limit)
            # A refusal is recorded too (committed with this transaction), then raised.
            await self.audit.record(
                s,
                actor,
                "patient.documents",
                patient_id=patient_id,
                resource=f"patient/{patient_id}",
                outcome="denied",
            )
        raise Forbidden(
            "only practitioners who authored a document about this patient "
            "(or administrators) see the patient's documents"
        )

    # ------------------------------------------------------------------ one document

    async def open(
        self,
        actor: Actor,
        principal: Principal,
        document_id: str,
        *,
        action: str = "document.read",
        details: dict[str, str] | None = None,
    ) -> Opened:
        """One document (bytes included), its summary and every version of its set."""
        async with self.db.transaction() as s:
            doc = await s.get(ClinicalDocument, document_id)
            if doc is None:
                raise NotFound("no such document")
            access = await self.may_open(s, principal, doc)
            await self.audit.record(
                s,
                actor,
                action,
                patient_id=doc.patient_id,
                resource=f"document/{doc.id}",
                outcome="success" if access else "denied",
                details=details,
            )
            if access is not None:
                versions = await self._summaries(
                    s,
                    actor,
                    select(ClinicalDocument)
                    .where(ClinicalDocument.set_id == doc.set_id)
                    .order_by(ClinicalDocument.version.desc()),
                    audit=False,
                )
                summary = next(v for v in versions if v.id == doc.id)
                return Opened(doc, summary, versions, access)
        raise NotFound("no such document")  # never confirm that someone else's exists

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _query(filters: Filters, after: Cursor | None) -> Select[ClinicalDocument]:
        doc = ClinicalDocument
        q = select(doc).order_by(doc.created_at.desc(), doc.id.desc())
        if after is not None:
            q = q.where(
                or_(
                    doc.created_at < after.created_at,
                    and_(doc.created_at == after.created_at, doc.id < after.id),
                )
            )
        if filters.status:
            q = q.where(ClinicalDocument.status == filters.status)
        if filters.kind:
            q = q.where(ClinicalDocument.kind == filters.kind)
        return q

    async def _page(
        self, s: AsyncSession, actor: Actor, q: Select[ClinicalDocument], limit: int
    ) -> Page:
        rows = await self._summaries(s, actor, q.limit(limit + 1), audit_first=limit)
        if len(rows) <= limit:
            return Page(rows, None)
        last = rows[limit - 1]
        return Page(rows[:limit], Cursor(last.created_at, last.id).token())

    async def _summaries(
        self,
        s: AsyncSession,
        actor: Actor,
        q: Select[ClinicalDocument],
        *,
        audit: bool = True,
        audit_first: int | None = None,
    ) -> list[DocumentSummary]:
        """Summaries of the documents ``q`` selects, the first ``audit_first`` of them (all by
        default) audited as shown."""
        # A listing never reads the documents' bytes.
        docs: Sequence[ClinicalDocument] = (
            (await s.execute(q.options(defer(ClinicalDocument.content)))).scalars().all()
        )
        if not docs:
            return []
        ids = [d.id for d in docs]
        patients = {
            p.id: p
            for p in (
                await s.execute(select(Patient).where(Patient.id.in_({d.patient_id for d in docs})))
            ).scalars()
        }
        authors = {
            a.id: a.display_name
            for a in (
                await s.execute(
                    select(Account).where(
                        Account.id.in_({d.author_account_id for d in docs if d.author_account_id})
                    )
                )
            ).scalars()
        }
        replaced_by = {
            str(r[1]): str(r[0])
            for r in await s.execute(
                select(ClinicalDocument.id, ClinicalDocument.replaces_id).where(
                    ClinicalDocument.replaces_id.in_(ids)
                )
            )
        }
        deliveries: dict[str, list[TargetDelivery]] = {i: [] for i in ids}
        msgs = await s.execute(
            select(OutboxMessage)
            .where(OutboxMessage.document_id.in_(ids))
            .order_by(OutboxMessage.target, OutboxMessage.created_at)
        )
        for m in msgs.scalars():
            assert m.document_id is not None
            deliveries[m.document_id].append(_delivery(m))
        # A version entered in error also shows the withdrawals of the earlier version a receiver
        # still held (it refused the later one): that is what marking it withdrew there.
        marked = {d.set_id: d.id for d in docs if d.status == "entered-in-error"}
        if marked:
            earlier = await s.execute(
                select(OutboxMessage, ClinicalDocument.set_id)
                .join(ClinicalDocument, ClinicalDocument.id == OutboxMessage.document_id)
                .where(OutboxMessage.kind == "withdrawal", ClinicalDocument.set_id.in_(marked))
                .order_by(OutboxMessage.target, OutboxMessage.created_at)
            )
            for m, set_id in earlier:
                if m.document_id != marked[set_id]:
                    deliveries[marked[set_id]].append(_delivery(m))
        out = []
        for d in docs:
            p = patients.get(d.patient_id)
            dtype = codes.BY_DT_CODE.get(d.type_code)
            out.append(
                DocumentSummary(
                    id=d.id,
                    set_id=d.set_id,
                    version=d.version,
                    kind=d.kind,
                    type_code=d.type_code,
                    type_display=dtype.display if dtype else d.type_code,
                    status=d.status,
                    confidentiality=d.confidentiality,
                    created_at=d.created_at,
                    patient_id=d.patient_id,
                    patient_name=p.full_name if p else "",
                    patient_matricule=p.matricule if p else "",
                    author_account_id=d.author_account_id,
                    author_name=authors.get(d.author_account_id or "", ""),
                    replaces_id=d.replaces_id,
                    replaced_by_id=replaced_by.get(d.id),
                    size=d.size,
                    sha256=d.sha256,
                    signed=d.signature is not None,
                    deliveries=tuple(deliveries[d.id]),
                )
            )
        if audit:
            await self.audit.record_many(
                s,
                actor,
                [
                    AuditEntry(
                        "document.list", patient_id=d.patient_id, resource=f"document/{d.id}"
                    )
                    for d in docs[:audit_first]
                ],
            )
        return out


def _delivery(m: OutboxMessage) -> TargetDelivery:
    return TargetDelivery(
        m.target,
        m.status,
        m.attempts,
        m.remote_reference,
        m.last_error,
        m.delivered_at,
        '"replaces":{' in m.payload,
        m.kind,
    )
