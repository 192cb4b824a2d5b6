"""The clinical document store: versions, statuses, exact bytes, hashes and signatures.

A draft may change; once final, a document's bytes never change again (the service refuses). A
correction is a new version in the same set that replaces the old one, which becomes ``amended``;
a document issued by mistake becomes ``entered-in-error``. Every read or write of a document is a
patient-data access and is audited in the same transaction.

A replacement is delivered where its predecessor went, in the transaction that stores it (when the
store has an ``Outbox``): to each target the predecessor was queued for — or, if it never was, to
the targets of its kind (``DELIVERY_TARGETS``). A receiver gets the replacement relation (XDS RPLC,
MHD ``relatesTo``, the CNS envelope's ``replaces``) to the newest earlier version it accepted; one
that never accepted any gets the new version as an original submission, since it has nothing to
replace. While the predecessor is still on its way to a target the correction is refused
(``Conflict``): a receiver cannot replace what it has not stored yet.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from konsil.audit.models import AuditEvent
from konsil.audit.service import Actor, AuditLog
from konsil.clock import Clock
from konsil.errors import Conflict, NotFound, ValidationError
from konsil.identity.models import Patient
from workflow.models import ClinicalDocument, OutboxMessage, new_id
from workflow.signing import KeyRing, verifier_for
from workflow.withdrawal import do_withdraw

if TYPE_CHECKING:
    from workflow.outbox import Outbox

CONFIDENTIALITY = ("N", "R", "V")
# Where a document of each kind goes when nothing says otherwise (the issuers' own choice).
DELIVERY_TARGETS: dict[str, tuple[str, ...]] = {"sick-leave": ("cns", "dsp")}
DEFAULT_TARGETS: tuple[str, ...] = ("dsp",)
_DOCUMENTS = cast(Table, ClinicalDocument.__table__)


_AUDIT_COLUMNS = ("at", "actor", "action", "patient_id", "resource", "outcome", "ip", "details")


def _insert_sql(table: Table, columns: Sequence[str], prefix: str) -> tuple[str, list[Any]]:
    names = ", ".join(columns)
    marks = ", ".join(f":{prefix}{c}" for c in columns)
    binds = [bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in columns]
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608 - model names
    return sql, binds


@functools.cache
def _issue_statement(messages: int) -> TextClause:
    """PostgreSQL: document + audit event + ``messages`` outbox rows in one statement."""
    audit_table = cast(Table, AuditEvent.__table__)
    outbox_table = cast(Table, OutboxMessage.__table__)
    doc_sql, binds = _insert_sql(_DOCUMENTS, [c.name for c in _DOCUMENTS.c], "d_")
    audit_sql, audit_binds = _insert_sql(audit_table, _AUDIT_COLUMNS, "a_")
    binds += audit_binds
    rows = []
    outbox_columns = [c.name for c in outbox_table.c]
    for i in range(messages):
        sql, more = _insert_sql(outbox_table, outbox_columns, f"o{i}_")
        rows.append(sql.split(" VALUES ", 1)[1])
        binds += more
    outbox_sql = f"INSERT INTO {outbox_table.name} ({', '.join(outbox_columns)}) VALUES "  # noqa: S608
    # Data-modifying CTEs run once and to completion even though nothing reads them; the
    # foreign keys (outbox -> document) are checked at the end of the statement.
    sql = f"WITH d AS ({doc_sql}), a AS ({audit_sql}) {outbox_sql}{', '.join(rows)}"
    return text(sql).bindparams(*binds)


@dataclass(frozen=True)
class NewDocument:
    kind: str
    type_code: str
    patient_id: str
    organisation_id: str
    content: bytes
    author_account_id: str | None = None
    author_practitioner_id: str | None = None
    legal_authenticator_id: str | None = None
    confidentiality: str = "N"
    mime_type: str = "text/xml"
    document_id: str | None = None  # chosen by the caller when the bytes already carry it


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    reason: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_new_document(new: NewDocument) -> None:
    errors: dict[str, str] = {}
    if not new.content:
        errors["content"] = "the document is empty"
    if not new.type_code.startswith("DT-"):
        errors["type_code"] = "expected an eSanté document type code DT-xxxxx"
    if new.confidentiality not in CONFIDENTIALITY:
        errors["confidentiality"] = f"must be one of {', '.join(CONFIDENTIALITY)}"
    if not new.kind:
        errors["kind"] = "required"
    if errors:
        raise ValidationError("the document is not valid", fields=errors)


class DocumentStore:
    def __init__(
        self, clock: Clock, audit: AuditLog, keys: KeyRing, outbox: Outbox | None = None
    ) -> None:
        self.clock = clock
        self.audit = audit
        self.keys = keys
        self.outbox = outbox  # when set, replacements are queued for delivery with themselves

    # ------------------------------------------------------------------ writes (caller's tx)

    async def do_create(
        self,
        s: AsyncSession,
        actor: Actor,
        new: NewDocument,
        *,
        status: Literal["draft", "final"] = "final",
        replaces: ClinicalDocument | None = None,
    ) -> ClinicalDocument:
        """Store a document (signed when final) in the caller's transaction."""
        values = await self._values(s, new, status, replaces)
        # One Core INSERT (hot path: every issued document) instead of a unit-of-work flush;
        # objects the caller added are flushed first (the row may refer to them). The returned
        # object is not attached to the session.
        if s.new:
            await s.flush()
        await s.execute(insert(_DOCUMENTS), values)
        doc = ClinicalDocument(**values)
        await self.audit.record(
            s,
            actor,
            "document.create" if replaces is None else "document.replace",
            patient_id=doc.patient_id,
            resource=f"document/{doc.id}",
            details={"type": doc.type_code, "status": doc.status, "version": doc.version},
        )
        return doc

    async def do_issue(
        self,
        s: AsyncSession,
        actor: Actor,
        new: NewDocument,
        outbox: Outbox,
        deliveries: Sequence[tuple[str, Mapping[str, Any]]],
    ) -> tuple[ClinicalDocument, list[OutboxMessage]]:
        """Issue a final document and queue it, in the caller's transaction: the same rows as
        ``do_create`` followed by one ``Outbox.enqueue`` per ``(target, payload)`` (idempotency
        key ``<target>-<document id>``). On PostgreSQL the document, its audit event and its
        messages are ONE statement (data-modifying CTEs): one round trip instead of 2 + n.
        """
        if not deliveries:
            raise ValidationError("a document must go somewhere", fields={"targets": "required"})
        if s.get_bind().dialect.name != "postgresql":
            doc = await self.do_create(s, actor, new, status="final")
            msgs = [
                await outbox.enqueue(
                    s,
                    target,
                    payload,
                    f"{target}-{doc.id}",
                    document_id=doc.id,
                    author_account_id=doc.author_account_id,
                )
                for target, payload in deliveries
            ]
            return doc, msgs
        values = await self._values(s, new, "final", None)
        params = {f"d_{k}": v for k, v in values.items()}
        event = self.audit.values(
            actor,
            "document.create",
            patient_id=new.patient_id,
            resource=f"document/{values['id']}",
            details={"type": new.type_code, "status": "final", "version": 1},
        )
        params.update({f"a_{k}": v for k, v in event.items()})
        messages = []
        for i, (target, payload) in enumerate(deliveries):
            msg = outbox.message_values(
                target,
                payload,
                f"{target}-{values['id']}",
                document_id=values["id"],
                author_account_id=new.author_account_id,
            )
            params.update({f"o{i}_{k}": v for k, v in msg.items()})
            messages.append(msg)
        if s.new:
            await s.flush()
        await s.execute(_issue_statement(len(deliveries)), params)
        return ClinicalDocument(**values), [OutboxMessage(**m) for m in messages]

    async def _values(
        self,
        s: AsyncSession,
        new: NewDocument,
        status: Literal["draft", "final"],
        replaces: ClinicalDocument | None,
    ) -> dict[str, Any]:
        """The checked (and, when final, signed) column values of a new document row."""
        check_new_document(new)
        now = self.clock.now()
        values: dict[str, Any] = {
            "id": new.document_id or new_id(),
            "set_id": replaces.set_id if replaces else new_id(),
            "version": replaces.version + 1 if replaces else 1,
            "replaces_id": replaces.id if replaces else None,
            "kind": new.kind,
            "type_code": new.type_code,
            "patient_id": new.patient_id,
            "author_account_id": new.author_account_id,
            "author_practitioner_id": new.author_practitioner_id,
            "legal_authenticator_id": new.legal_authenticator_id,
            "organisation_id": new.organisation_id,
            "status": "draft",
            "confidentiality": new.confidentiality,
            "mime_type": new.mime_type,
            "created_at": now,
            "finalised_at": None,
            "content": new.content,
            "sha256": sha256_hex(new.content),
            "size": len(new.content),
            "signature": None,
            "signing_key_id": None,
        }
        if status == "final":
            signer = await self.keys.signer_for(s, new.organisation_id)
            values.update(
                signature=signer.sign(new.content),
                signing_key_id=signer.key_id,
                status="final",
                finalised_at=self.clock.now(),
            )
        return values

    async def do_update_draft(
        self, s: AsyncSession, actor: Actor, document_id: str, content: bytes
    ) -> ClinicalDocument:
        doc = await self._get_for_update(s, document_id)
        if doc.status != "draft":
            raise Conflict(
                "a final document cannot change: issue a new version that replaces it",
                fields={"status": doc.status},
            )
        if not content:
            raise ValidationError("the document is empty", fields={"content": "required"})
        doc.content = content
        doc.sha256 = sha256_hex(content)
        doc.size = len(content)
        await self.audit.record(
            s, actor, "document.update", patient_id=doc.patient_id, resource=f"document/{doc.id}"
        )
        return doc

    async def do_finalise(
        self, s: AsyncSession, actor: Actor, document_id: str
    ) -> ClinicalDocument:
        doc = await self._get_for_update(s, document_id)
        if doc.status != "draft":
            raise Conflict("the document is already final", fields={"status": doc.status})
        await self._finalise(s, doc)
        await self.audit.record(
            s, actor, "document.finalise", patient_id=doc.patient_id, resource=f"document/{doc.id}"
        )
        return doc

    async def do_replace(
        self, s: AsyncSession, actor: Actor, document_id: str, new: NewDocument
    ) -> ClinicalDocument:
        """A correction: a new final version in the same set; the old one becomes amended."""
        old = await self._get_for_update(s, document_id)
        if old.status != "final":
            raise Conflict(
                "only the current final version can be replaced", fields={"status": old.status}
            )
        if new.patient_id != old.patient_id:
            raise ValidationError(
                "a replacement must concern the same patient", fields={"patient_id": "differs"}
            )
        sent = await self._check_deliverable(s, old)
        old.status = "amended"
        doc = await self.do_create(s, actor, new, status="final", replaces=old)
        if self.outbox is not None:
            await self._deliver_replacement(s, old, doc, sent)
        return doc

    async def _check_deliverable(
        self, s: AsyncSession, old: ClinicalDocument
    ) -> list[OutboxMessage]:
        """The predecessor's messages; Conflict while one of them is still on its way."""
        msgs = list(
            (
                await s.execute(
                    select(OutboxMessage)
                    .where(OutboxMessage.document_id == old.id, OutboxMessage.kind == "document")
                    .order_by(OutboxMessage.created_at)
                )
            ).scalars()
        )
        if self.outbox is not None:
            busy = sorted({m.target.upper() for m in msgs if m.status in ("pending", "in_flight")})
            if busy:
                raise Conflict(
                    "the document is still being delivered: correct it once "
                    f"{', '.join(busy)} acknowledged it",
                    fields={"delivery": ", ".join(busy)},
                )
        return msgs

    async def _deliver_replacement(
        self,
        s: AsyncSession,
        old: ClinicalDocument,
        doc: ClinicalDocument,
        sent: list[OutboxMessage],
    ) -> None:
        assert self.outbox is not None
        by_target: dict[str, OutboxMessage] = {}
        for m in sent:
            by_target[m.target] = m  # the latest message per target
        targets = list(by_target) or list(DELIVERY_TARGETS.get(doc.kind, DEFAULT_TARGETS))
        patient = await s.get(Patient, doc.patient_id)
        # Per target, the newest earlier version the receiver accepted: what it must replace
        # (a refused predecessor may itself have replaced one that was accepted).
        held: dict[str, tuple[str, str | None]] = {}
        rows = await s.execute(
            select(OutboxMessage.target, OutboxMessage.document_id, OutboxMessage.remote_reference)
            .join(ClinicalDocument, ClinicalDocument.id == OutboxMessage.document_id)
            .where(
                ClinicalDocument.set_id == old.set_id,
                ClinicalDocument.version < doc.version,
                OutboxMessage.status == "delivered",
                OutboxMessage.kind == "document",
            )
            .order_by(ClinicalDocument.version)
        )
        for target, document_id, reference in rows:
            held[str(target)] = (str(document_id), reference)
        for target in targets:
            prev = by_target.get(target)
            payload: dict[str, Any] = json.loads(prev.payload) if prev is not None else {}
            # the patient's matricule as it is now (the predecessor's may have been refused)
            payload["patient_matricule"] = patient.matricule if patient else ""
            if target in held:
                replaced_id, reference = held[target]
                payload["replaces"] = {"document_id": replaced_id, "reference": reference}
            else:
                payload["replaces"] = None  # the receiver has nothing to replace
            await self.outbox.enqueue(
                s,
                target,
                payload,
                f"{target}-{doc.id}",
                document_id=doc.id,
                author_account_id=doc.author_account_id,
            )

    async def do_mark_entered_in_error(
        self, s: AsyncSession, actor: Actor, document_id: str
    ) -> ClinicalDocument:
        doc = await self._get_for_update(s, document_id)
        if doc.status not in ("final", "draft"):
            raise Conflict("the document is not current", fields={"status": doc.status})
        details: dict[str, str] | None = None
        if self.outbox is not None and doc.status == "final":
            # receivers that hold it are told in this transaction (workflow.withdrawal)
            details = (await do_withdraw(s, self.outbox, self.clock, doc)).details()
        doc.status = "entered-in-error"
        await self.audit.record(
            s,
            actor,
            "document.entered-in-error",
            patient_id=doc.patient_id,
            resource=f"document/{doc.id}",
            details=details,
        )
        return doc

    async def _finalise(self, s: AsyncSession, doc: ClinicalDocument) -> None:
        signer = await self.keys.signer_for(s, doc.organisation_id)
        doc.signature = signer.sign(doc.content)
        doc.signing_key_id = signer.key_id
        doc.status = "final"
        doc.finalised_at = self.clock.now()

    async def _get_for_update(self, s: AsyncSession, document_id: str) -> ClinicalDocument:
        doc = (
            await s.execute(
                select(ClinicalDocument).where(ClinicalDocument.id == document_id).with_for_update()
            )
        ).scalar_one_or_none()
        if doc is None:
            raise NotFound("no such document")
        return doc

    # ------------------------------------------------------------------ reads

    async def get(self, s: AsyncSession, actor: Actor, document_id: str) -> ClinicalDocument:
        doc = await s.get(ClinicalDocument, document_id)
        if doc is None:
            raise NotFound("no such document")
        await self.audit.record(
            s, actor, "document.read", patient_id=doc.patient_id, resource=f"document/{doc.id}"
        )
        return doc


async def verify_document(s: AsyncSession, document_id: str) -> VerifyOutcome:
    """Check a stored document: hash of its exact bytes, and its detached signature."""
    doc = await s.get(ClinicalDocument, document_id)
    if doc is None:
        return VerifyOutcome(False, "no such document")
    if doc.signature is None or doc.signing_key_id is None:
        return VerifyOutcome(False, f"the document is not signed (status {doc.status})")
    if sha256_hex(doc.content) != doc.sha256:
        return VerifyOutcome(False, "SHA-256 of the stored bytes does not match the recorded hash")
    verifier = await verifier_for(s, doc.signing_key_id)
    if verifier is None:
        return VerifyOutcome(False, "the signing key is unknown")
    if not verifier.verify(doc.content, doc.signature):
        return VerifyOutcome(False, "the signature does not match the document bytes")
    return VerifyOutcome(True, f"signature valid (key {doc.signing_key_id}, {doc.size} bytes)")
